"""molml_jax.interpret: each attribution method against a direct computation (mutants
predicted one by one, jax.grad, a linear function's exact integral), completeness of
integrated gradients, baselines, N rows, one compile per (f, shape), and bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from molml_jax.errors import InputError
from molml_jax.interpret import (
    BASELINES, METHODS, attribute, in_silico_mutagenesis, input_x_gradient, integrated_gradients,
    make_baseline, reverse_complement, saliency,
)
from molml_jax.models import BiLSTMClassifier, BindingPredictorCNN

LENGTH = 20
BASES = "ACGT"


def one_hot(*sequences: str) -> np.ndarray:
    """Strings of A, C, G, T, N -> (N, L, 4) float32, N as an all-zero row."""
    return np.array([[[float(c == b) for b in BASES] for c in s] for s in sequences], np.float32)


def random_dna(n: int, seed: int, length: int = LENGTH) -> np.ndarray:
    return np.eye(4, dtype=np.float32)[np.random.default_rng(seed).integers(0, 4, (n, length))]


@pytest.fixture(scope="module")
def models() -> dict:
    """name -> (f (B, L, 4) -> (B,), the model's jitted apply (B, L, 4) -> (B,)), tiny and
    randomly initialised: the DNA BiLSTM's logit, the TF CNN's summed scores. Module-scoped,
    so the compiled programs (cached keyed on f) serve every test."""
    x = jnp.zeros((1, LENGTH, 4))
    lstm = BiLSTMClassifier(hidden_dim=4)
    lstm_vars = jax.jit(lstm.init)(jax.random.PRNGKey(0), x)  # jitted: faster than eager
    cnn = BindingPredictorCNN(num_channels=4, num_blocks=1, kernel_size=3, dropout_rate=0.0, length=LENGTH)
    cnn_vars = jax.jit(cnn.init)(jax.random.PRNGKey(0), x)
    f_lstm = lambda z: lstm.apply(lstm_vars, z, train=False)  # noqa: E731
    f_cnn = lambda z: cnn.apply(cnn_vars, z, train=False).sum(-1)  # noqa: E731
    return {"lstm": (f_lstm, jax.jit(f_lstm)), "cnn": (f_cnn, jax.jit(f_cnn))}


# ----- in-silico mutagenesis --------------------------------------------------------------------

@pytest.mark.parametrize("name", ["lstm", "cnn"])
@pytest.mark.parametrize("with_n", [False, True], ids=["one-hot", "with-N-row"])
def test_ism_equals_predicting_each_mutant_one_by_one(models, name, with_n):
    f, apply = models[name]
    x = random_dna(3, seed=1)
    if with_n:  # an N row: all 4L mutants are evaluated, else only the 3L changed ones
        x[1, 4] = 0.0
    got = in_silico_mutagenesis(f, x, batch_size=2)  # 2 batches, the last one padded
    assert got.shape == x.shape and got.dtype == np.float32
    expected = np.zeros_like(x)
    for i in range(len(x)):
        before = float(apply(x[i:i + 1])[0])
        for p in range(LENGTH):
            for b in range(4):
                mutant = x[i].copy()
                mutant[p] = np.eye(4)[b]
                expected[i, p, b] = float(apply(mutant[None])[0]) - before
    scale = max(1.0, np.abs(np.asarray(apply(x))).max())
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * scale)
    assert np.all(got[x == 1] == 0.0)  # the reference base: exactly no change
    if with_n:
        assert np.all(got[1, 4] != 0.0)  # at N, every base is a change


# ----- integrated gradients ---------------------------------------------------------------------

def test_integrated_gradients_of_a_linear_function_is_exact():
    w = np.random.default_rng(2).normal(size=(LENGTH, 4)).astype(np.float32)
    f = lambda z: jnp.sum(z * w, axis=(1, 2)) + 3.0  # noqa: E731
    x = random_dna(5, seed=3)
    x[0, :3] = 0.0  # N rows
    for baseline in (*BASELINES, np.full((LENGTH, 4), 0.1, np.float32)):
        for steps in (1, 7):
            attributions, completeness = integrated_gradients(f, x, baseline=baseline, steps=steps, batch_size=2)
            b = make_baseline(x, baseline)
            np.testing.assert_allclose(attributions, (x - b) * w, rtol=0, atol=1e-6)
            assert completeness.shape == (5,) and np.all(completeness < 1e-5)


def test_integrated_gradients_of_the_lstm_is_complete_with_50_steps(models):
    f, _ = models["lstm"]
    x = random_dna(6, seed=4)
    x[2, 7] = 0.0
    attributions, completeness = integrated_gradients(f, x)  # uniform baseline, 50 steps
    assert attributions.shape == x.shape and completeness.shape == (6,)
    assert np.all(completeness < 1e-2), completeness
    assert np.all(attributions[2, 7] == 0.0)  # x - b = 0 at N under the uniform baseline


def test_integrated_gradients_of_the_relu_cnn_converges(models):
    """The CNN is piecewise smooth (ReLU): the midpoint rule's error falls as 1/steps, not
    1/steps^2, and 50 steps leave a few percent on this random model; 1000 complete it."""
    f, _ = models["cnn"]
    x = random_dna(6, seed=4)
    _, coarse = integrated_gradients(f, x, steps=50)
    _, fine = integrated_gradients(f, x, steps=1000)
    assert np.all(fine < 1e-2), fine
    assert fine.mean() < coarse.mean() / 5, (coarse, fine)


def test_baselines_uniform_zeros_shuffle_and_n_rows():
    x = one_hot("ACGTNNACGG", "TTTTACNAAA")
    uniform = make_baseline(x, "uniform")
    assert np.all(uniform[x.sum(-1) > 0] == 0.25) and np.all(uniform[x.sum(-1) == 0] == 0.0)
    assert np.all(make_baseline(x, "zeros") == 0.0)
    shuffled = make_baseline(x, "shuffle", seed=7)
    np.testing.assert_array_equal(shuffled, make_baseline(x, "shuffle", seed=7))  # deterministic
    assert not np.array_equal(shuffled, make_baseline(x, "shuffle", seed=8))
    for i in range(len(x)):
        real = x[i].sum(-1) > 0
        np.testing.assert_array_equal(shuffled[i, ~real], 0.0)  # N rows stay where they were
        np.testing.assert_array_equal(shuffled[i, real].sum(-1), 1.0)  # real rows get real bases
        assert sorted(map(tuple, shuffled[i, real])) == sorted(map(tuple, x[i, real]))  # a permutation
    many = random_dna(6, seed=5)
    np.testing.assert_array_equal(make_baseline(many[:2], "shuffle"), make_baseline(many, "shuffle")[:2])
    np.testing.assert_array_equal(make_baseline(x, np.float32(0.5)), np.full_like(x, 0.5))  # broadcast


# ----- gradients ----------------------------------------------------------------------------------

def test_saliency_is_the_models_gradient(models):
    x = one_hot("ACGTACGTNNACGTTGCAAC", "GGGGCCCCAAAATTTTACGT", "TTGACANNNNTATAATACGA")
    for name in ("lstm", "cnn"):
        f, apply = models[name]
        got = saliency(f, x, batch_size=2)
        for i in range(len(x)):
            expected = jax.grad(lambda s: apply(s[None])[0])(jnp.asarray(x[i]))
            np.testing.assert_allclose(got[i], expected, rtol=1e-5, atol=1e-6)
        assert np.abs(got).max() > 0


def test_saliency_of_a_quadratic_function_by_hand():
    """f(x) = (sum x * w)^2 has gradient 2 (sum x * w) w."""
    w = np.arange(LENGTH * 4, dtype=np.float32).reshape(LENGTH, 4) / 100
    f = lambda z: jnp.sum(z * w, axis=(1, 2)) ** 2  # noqa: E731
    x = random_dna(3, seed=6)
    expected = 2 * (x * w).sum((1, 2))[:, None, None] * w
    np.testing.assert_allclose(saliency(f, x), expected, rtol=1e-6)


def test_input_x_gradient_is_saliency_times_x(models):
    f, _ = models["lstm"]
    x = random_dna(4, seed=7)
    x[0, 3] = 0.0
    got = input_x_gradient(f, x, batch_size=2)
    np.testing.assert_array_equal(got, saliency(f, x, batch_size=2) * x)
    assert np.all(got[x == 0] == 0.0) and np.any(got != 0)


# ----- the dispatcher, helpers, compiles and errors -----------------------------------------------

def test_attribute_dispatches_every_method(models):
    f, _ = models["lstm"]
    x = random_dna(3, seed=8)
    sized = {"batch_size": 2}  # the batch shape of the tests above: their compiled programs serve
    expected = {"saliency": saliency(f, x, **sized), "input-x-gradient": input_x_gradient(f, x, **sized),
                "ism": in_silico_mutagenesis(f, x, **sized),
                "integrated-gradients": integrated_gradients(f, x, **sized)[0]}
    assert set(expected) == set(METHODS)
    for method in METHODS:
        out = attribute(f, x, method, **sized)
        assert set(out) == ({"attributions", "completeness"} if method == "integrated-gradients" else {"attributions"})
        np.testing.assert_allclose(out["attributions"], expected[method], rtol=1e-6, atol=1e-7)


def test_reverse_complement_numpy_and_jax():
    x = one_hot("ACGTN", "AACCG")
    np.testing.assert_array_equal(reverse_complement(x), one_hot("NACGT", "CGGTT"))
    np.testing.assert_array_equal(np.asarray(reverse_complement(jnp.asarray(x))), one_hot("NACGT", "CGGTT"))
    np.testing.assert_array_equal(reverse_complement(reverse_complement(x)), x)


def test_one_compile_per_function_and_batch_shape():
    traces = []
    w = np.ones((LENGTH, 4), np.float32)

    def f(z):
        traces.append(z.shape)  # runs at trace time only
        return jnp.sum(jnp.tanh(z * w), axis=(1, 2))

    saliency(f, random_dna(5, seed=9), batch_size=2)
    in_silico_mutagenesis(f, random_dna(5, seed=9), batch_size=2)
    after_first = len(traces)
    saliency(f, random_dna(7, seed=10), batch_size=2)  # more batches, the same shape
    in_silico_mutagenesis(f, random_dna(3, seed=10), batch_size=2)
    assert len(traces) == after_first
    assert saliency(f, np.zeros((0, LENGTH, 4), np.float32)).shape == (0, LENGTH, 4)


def scores_per_position(z):
    return jnp.sum(z, axis=-1)  # (B, L): not one number per sequence


@pytest.mark.parametrize("call, message", [
    (lambda f, x: integrated_gradients(f, x, steps=0), "steps must be a positive integer, got 0"),
    (lambda f, x: integrated_gradients(f, x, baseline="random"),
     "baseline must be one of uniform, zeros, shuffle or an array broadcastable to"),
    (lambda f, x: integrated_gradients(f, x, baseline=np.zeros((3, 5))),
     r"baseline of shape \(3, 5\) does not broadcast to x's shape \(2, 20, 4\)"),
    (lambda f, x: integrated_gradients(f, x, baseline="shuffle", seed=-1), "seed must be a non-negative integer"),
    (lambda f, x: attribute(f, x, "deeplift"),
     "method must be one of saliency, input-x-gradient, integrated-gradients, ism, not 'deeplift'"),
    (lambda f, x: saliency(f, x[..., :3]), r"x must be one-hot DNA of shape \(N, L, 4\) with L >= 1, got shape \(2, 20, 3\)"),
    (lambda f, x: saliency(f, x[0]), r"x must be one-hot DNA of shape \(N, L, 4\)"),
    (lambda f, x: saliency(f, "ACGT"), "x must be a numeric one-hot array"),
    (lambda f, x: in_silico_mutagenesis(f, x, batch_size=0), "batch_size must be a positive integer, got 0"),
    (lambda f, x: saliency(None, x), "f must be a function"),
    (lambda f, x: saliency(scores_per_position, x), r"f must return one number per sequence, shape \(2,\)"),
    (lambda f, x: in_silico_mutagenesis(scores_per_position, x), "f must return one number per sequence"),
])
def test_bad_input_is_one_clear_line(call, message):
    f = lambda z: jnp.sum(z, axis=(1, 2))  # noqa: E731
    with pytest.raises(InputError, match=message) as err:
        call(f, random_dna(2, seed=11))
    assert "\n" not in str(err.value)
