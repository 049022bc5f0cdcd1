"""PyTorch LSTMseq -> Flax BiLSTMClassifier: outputs, packed sequences, .pt files, bad
input, and one Adam step from the same weights."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

from benchmarks.torch_models import LSTMseq  # noqa: E402
from molml_jax.errors import InputError  # noqa: E402
from molml_jax.interop import load_torch_lstm_checkpoint, lstm_params_from_torch  # noqa: E402
from molml_jax.models import BiLSTMClassifier  # noqa: E402
from molml_jax.train.losses import binary_cross_entropy_with_logits  # noqa: E402

HIDDEN, BATCH, LENGTH = 16, 64, 101


def random_one_hot(rng: np.random.Generator, batch: int, length: int, n_fraction: float = 0.05):
    """One-hot DNA (B, L, 4) with about n_fraction all-zero rows (IUPAC N)."""
    x = np.eye(4, dtype=np.float32)[rng.integers(0, 4, size=(batch, length))]
    x[rng.random((batch, length)) < n_fraction] = 0.0
    return x


@pytest.fixture(scope="module")
def torch_model():
    torch.manual_seed(1)
    return LSTMseq(HIDDEN).eval()


@pytest.fixture(scope="module")
def model():
    return BiLSTMClassifier(hidden_dim=HIDDEN)


def test_ported_weights_match_torch_probabilities(torch_model, model):
    rng = np.random.default_rng(0)
    x = random_one_hot(rng, BATCH, LENGTH)
    assert (x.sum(-1) == 0).any()
    with torch.no_grad():
        expected = torch_model(torch.from_numpy(x)).numpy()
    params = lstm_params_from_torch(torch_model.state_dict())
    got = np.asarray(jax.nn.sigmoid(model.apply({"params": params}, x)))
    assert got.shape == expected.shape == (BATCH,)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


def test_ported_tree_matches_model_init(torch_model, model):
    params = lstm_params_from_torch(torch_model.state_dict(), hidden_dim=HIDDEN)
    init = model.init(jax.random.key(0), jnp.zeros((1, 5, 4)))["params"]
    shapes = lambda tree: jax.tree.map(lambda a: (a.shape, a.dtype), tree)  # noqa: E731
    assert shapes(params) == shapes(init)


def test_packed_sequences_match_lengths(torch_model, model):
    rng = np.random.default_rng(1)
    x = random_one_hot(rng, BATCH, LENGTH)
    lengths = rng.integers(1, LENGTH + 1, size=BATCH).astype(np.int32)
    lengths[:3] = (LENGTH, 1, 2)
    x[np.arange(LENGTH)[None, :] >= lengths[:, None]] = 0.0  # zero padding at the end
    with torch.no_grad():
        expected = torch_model(torch.from_numpy(x), torch.from_numpy(lengths).long()).numpy()
    params = lstm_params_from_torch(torch_model.state_dict())
    got = np.asarray(jax.nn.sigmoid(model.apply({"params": params}, x, lengths)))
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    # padding matters: without lengths the backward direction starts on the zeros
    unpacked = np.asarray(jax.nn.sigmoid(model.apply({"params": params}, x)))
    assert np.abs(unpacked - expected).max() > 1e-4


def test_numpy_values_and_dataparallel_prefix(torch_model):
    state = {f"module.{k}": v.numpy() for k, v in torch_model.state_dict().items()}
    ported = lstm_params_from_torch(state)
    direct = lstm_params_from_torch(torch_model.state_dict())
    jax.tree.map(np.testing.assert_array_equal, ported, direct)
    w_ih = torch_model.state_dict()["lstm.weight_ih_l0_reverse"].numpy()
    np.testing.assert_array_equal(ported["lstm_backward"]["kernel_ih"], w_ih.T)


def test_checkpoint_file_round_trip(torch_model, model, tmp_path):
    path = tmp_path / "lstmseq.pt"
    torch.save(torch_model.state_dict(), path)
    params = load_torch_lstm_checkpoint(path)
    x = random_one_hot(np.random.default_rng(2), 8, LENGTH)
    with torch.no_grad():
        expected = torch_model(torch.from_numpy(x)).numpy()
    got = np.asarray(jax.nn.sigmoid(model.apply({"params": params}, x)))
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    # a training checkpoint that nests the state_dict
    nested = tmp_path / "training.pt"
    torch.save({"epoch": 3, "model_state_dict": torch_model.state_dict()}, nested)
    jax.tree.map(np.testing.assert_array_equal, load_torch_lstm_checkpoint(nested), params)


def _state(torch_model):
    return {k: v.clone() for k, v in torch_model.state_dict().items()}


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s.pop("lstm.weight_ih_l0_reverse"), "missing key lstm.weight_ih_l0_reverse"),
        (lambda s: s.pop("mlp.4.bias"), "missing key mlp.4.bias"),
        (lambda s: s.update({"mlp.2.weight": torch.zeros(HIDDEN, HIDDEN + 1)}),
         "mlp.2.weight has shape (16, 17), expected (16, 16)"),
        (lambda s: s.update({"lstm.weight_ih_l0": torch.zeros(4 * HIDDEN, 5)}),
         "lstm.weight_ih_l0 has shape (64, 5), expected (64, 4)"),
        (lambda s: s.update({"lstm.weight_hh_l0": torch.zeros(4 * HIDDEN, 3)}),
         "lstm.weight_hh_l0 has shape (64, 3), expected (4H, H)"),
        (lambda s: s.update({"lstm.weight_ih_l1": torch.zeros(4 * HIDDEN, 2 * HIDDEN)}),
         "unexpected key lstm.weight_ih_l1"),
        (lambda s: s.update({"mlp.0.bias": torch.full((HIDDEN,), float("nan"))}),
         "mlp.0.bias contains NaN"),
    ],
)
def test_bad_state_dicts_name_the_problem(torch_model, edit, message):
    state = _state(torch_model)
    edit(state)
    with pytest.raises(InputError) as err:
        lstm_params_from_torch(state)
    assert str(err.value).startswith("state_dict: ")
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_another_models_state_dict_is_refused(tmp_path):
    other = torch.nn.Sequential(torch.nn.Conv1d(4, 8, 3), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    with pytest.raises(InputError, match=r"^state_dict: not a state_dict of the course's LSTMseq"):
        lstm_params_from_torch(other.state_dict())
    path = tmp_path / "cnn.pt"
    torch.save(other.state_dict(), path)
    with pytest.raises(InputError) as err:
        load_torch_lstm_checkpoint(path)
    assert str(err.value).startswith(f"{path}: not a state_dict of the course's LSTMseq")


def test_hidden_dim_mismatch(torch_model):
    with pytest.raises(InputError, match="LSTM hidden size is 16, expected hidden_dim 32"):
        lstm_params_from_torch(torch_model.state_dict(), hidden_dim=32)


def test_bad_files(tmp_path, torch_model):
    with pytest.raises(InputError, match="no such file"):
        load_torch_lstm_checkpoint(tmp_path / "absent.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match=r"garbage\.pt: not a readable PyTorch checkpoint"):
        load_torch_lstm_checkpoint(garbage)
    whole = tmp_path / "whole_model.pt"
    torch.save(torch_model, whole)  # a pickled module: weights_only refuses it
    with pytest.raises(InputError, match=r"whole_model\.pt: holds a pickled .*LSTMseq, not only tensors"):
        load_torch_lstm_checkpoint(whole)
    with pytest.raises(InputError, match="expected a state_dict"):
        lstm_params_from_torch([1, 2, 3])


def test_one_adam_step_matches_torch(model):
    """Same weights, same batch: equal loss and gradients; one Adam step (lr 1e-2) in torch
    and in JAX gives the same parameters, except for the LSTM biases (see below)."""
    torch.manual_seed(3)
    reference = LSTMseq(HIDDEN)
    rng = np.random.default_rng(3)
    x = random_one_hot(rng, BATCH, LENGTH)
    y = rng.integers(0, 2, size=BATCH).astype(np.float32)
    params = lstm_params_from_torch(reference.state_dict())

    reference.train()
    optimizer = torch.optim.Adam(reference.parameters(), lr=1e-2)
    optimizer.zero_grad()
    torch_loss = torch.nn.functional.binary_cross_entropy(reference(torch.from_numpy(x)), torch.from_numpy(y))
    torch_loss.backward()
    torch_grads = {k: p.grad.numpy().copy() for k, p in reference.named_parameters()}
    optimizer.step()
    expected = lstm_params_from_torch(reference.state_dict())

    def loss_fn(p):
        return binary_cross_entropy_with_logits(model.apply({"params": p}, x), jnp.asarray(y)).mean()

    tx = optax.adam(1e-2)
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, _ = tx.update(grads, tx.init(params), params)
    updated = optax.apply_updates(params, updates)
    assert abs(float(loss) - torch_loss.item()) < 1e-6

    # gradients: kernels are transposed torch weights; both biases as torch
    for suffix, name in (("", "lstm_forward"), ("_reverse", "lstm_backward")):
        g = jax.tree.map(np.asarray, grads[name])
        np.testing.assert_allclose(g["kernel_ih"], torch_grads[f"lstm.weight_ih_l0{suffix}"].T, atol=1e-6)
        np.testing.assert_allclose(g["kernel_hh"], torch_grads[f"lstm.weight_hh_l0{suffix}"].T, atol=1e-6)
        np.testing.assert_allclose(g["bias_ih"], torch_grads[f"lstm.bias_ih_l0{suffix}"], atol=1e-6)
        np.testing.assert_allclose(g["bias_hh"], torch_grads[f"lstm.bias_hh_l0{suffix}"], atol=1e-6)
    for layer, name in (("0", "dense_0"), ("2", "dense_1"), ("4", "dense_2")):
        np.testing.assert_allclose(np.asarray(grads[name]["kernel"]), torch_grads[f"mlp.{layer}.weight"].T, atol=1e-6)
        np.testing.assert_allclose(np.asarray(grads[name]["bias"]), torch_grads[f"mlp.{layer}.bias"], atol=1e-6)
    # the forward direction does not reach h_n[-1]: zero gradient, no update, in both
    np.testing.assert_array_equal(np.asarray(grads["lstm_forward"]["kernel_hh"]), 0.0)
    jax.tree.map(np.testing.assert_array_equal, updated["lstm_forward"], params["lstm_forward"])
    jax.tree.map(np.testing.assert_array_equal, expected["lstm_forward"], params["lstm_forward"])

    # every updated parameter agrees with torch's Adam step (biases included: two, as torch)
    for (path, got), want in zip(jax.tree_util.tree_leaves_with_path(updated), jax.tree.leaves(expected)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=0,
                                   err_msg=jax.tree_util.keystr(path))
    step = np.asarray(updated["lstm_backward"]["bias_ih"]) - np.asarray(params["lstm_backward"]["bias_ih"])
    assert np.abs(step).max() > 1e-3  # the step is large enough for the comparison to mean something
