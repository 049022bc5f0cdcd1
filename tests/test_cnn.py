"""TF-binding CNN: the Flax model against the study's PyTorch model (shapes, outputs with
ported weights, one AdamW step, initialisation), its LayerNorm against flax's, dropout,
the torch -> flax converter's errors, and the torch reference pipeline's bookkeeping."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

from benchmarks.torch_models import BindingPredictorCNN as TorchCNN  # noqa: E402
from benchmarks.torch_tf_binding import pearson_r, random_data, run_torch_reference  # noqa: E402
from molml_jax.errors import InputError  # noqa: E402
from molml_jax.interop import cnn_config_from_params, cnn_params_from_torch, load_torch_cnn_checkpoint  # noqa: E402
from molml_jax.models.cnn import BindingPredictorCNN, Dropout16, LayerNormLC  # noqa: E402
from molml_jax.ops.layer_norm import layer_norm_lc  # noqa: E402

C, K, BLOCKS, LENGTH = 32, 3, 3, 300


def random_one_hot(rng: np.random.Generator, batch: int, length: int, n_fraction: float = 0.05):
    """One-hot DNA (B, L, 4) with about n_fraction all-zero rows (IUPAC N)."""
    x = np.eye(4, dtype=np.float32)[rng.integers(0, 4, size=(batch, length))]
    x[rng.random((batch, length)) < n_fraction] = 0.0
    return x


def torch_forward(model, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 2, 1)))).numpy()


def perturbed(model):
    """The torch model with non-trivial LayerNorm affine parameters and final bias (the
    default init has weight 1 and bias 0: a transposition mistake would go unseen)."""
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name == "final_conv.bias":
                p.add_(0.3 * torch.randn(p.shape, generator=generator))
    return model


@pytest.fixture(scope="module")
def torch_model():
    torch.manual_seed(0)
    return perturbed(TorchCNN(C, BLOCKS, K, 0.2)).eval()


def test_shapes_and_parameter_count_match_torch(torch_model):
    model = BindingPredictorCNN()
    x = jnp.zeros((2, LENGTH, 4))
    params = model.init(jax.random.key(0), x)["params"]
    assert list(params) == ["initial_conv", "initial_norm", "block_0", "block_1", "block_2", "final_conv"]
    assert list(params["block_0"]) == ["conv1", "norm1", "conv2", "norm2"]
    assert params["initial_conv"]["kernel"].shape == (K, 4, C)
    assert params["block_1"]["conv2"]["kernel"].shape == (K, C, C)
    assert params["initial_norm"]["scale"].shape == params["block_2"]["norm1"]["bias"].shape == (LENGTH, C)
    assert params["final_conv"]["kernel"].shape == (1, C, 1) and params["final_conv"]["bias"].shape == (1,)
    n_flax = sum(a.size for a in jax.tree.leaves(params))
    assert n_flax == sum(p.numel() for p in torch_model.parameters()) == 153_249
    assert model.apply({"params": params}, x).shape == (2, LENGTH)
    # the converter produces exactly the tree init makes
    ported = cnn_params_from_torch(torch_model.state_dict())
    shapes = lambda tree: jax.tree.map(lambda a: (a.shape, a.dtype), tree)  # noqa: E731
    assert shapes(ported) == shapes(params)
    assert cnn_config_from_params(ported) == {"num_channels": C, "kernel_size": K, "num_blocks": BLOCKS, "length": LENGTH}


@pytest.mark.parametrize("length, batch", [(LENGTH, 8), (50, 4)])
def test_ported_weights_match_torch_outputs(length, batch, torch_model):
    if length == LENGTH:
        reference = torch_model
    else:
        torch.manual_seed(1)
        reference = perturbed(TorchCNN(C, BLOCKS, K, 0.2, length=length)).eval()
    x = random_one_hot(np.random.default_rng(length), batch, length)
    expected = torch_forward(reference, x)
    params = cnn_params_from_torch(reference.state_dict(), length=length)
    model = BindingPredictorCNN(length=length)
    got = np.asarray(model.apply({"params": params}, x))
    assert got.shape == expected.shape == (batch, length)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    # the same with the length taken from the input at init
    got_any = np.asarray(BindingPredictorCNN(length=None).apply({"params": params}, x))
    np.testing.assert_allclose(got_any, expected, atol=1e-5, rtol=0)


def test_wrong_length_is_a_clear_error():
    x = jnp.zeros((1, 50, 4))
    with pytest.raises(ValueError, match="built for length 300 .* got input of length 50"):
        BindingPredictorCNN().init(jax.random.key(0), x)
    model = BindingPredictorCNN(length=None)
    variables = model.init(jax.random.key(0), x)
    with pytest.raises(ValueError, match=r"LayerNorm was built for \(length, channels\) \(50, 32\)"):
        model.apply(variables, jnp.zeros((1, 60, 4)))
    with pytest.raises(ValueError, match="one-hot input"):
        model.apply(variables, jnp.zeros((1, 50, 5)))
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        BindingPredictorCNN(kernel_size=4, length=None).init(jax.random.key(0), x)


def test_layer_norm_equals_flax_layer_norm_with_gradients():
    """The written-out backward pass against autodiff of flax's nn.LayerNorm."""
    rng = np.random.default_rng(3)
    x = jnp.asarray(3.0 + 2.0 * rng.standard_normal((4, 50, 8)), jnp.float32)
    scale = jnp.asarray(1.0 + 0.3 * rng.standard_normal((50, 8)), jnp.float32)
    bias = jnp.asarray(0.3 * rng.standard_normal((50, 8)), jnp.float32)
    target = jnp.asarray(rng.standard_normal((4, 50, 8)), jnp.float32)
    flax_ln = nn.LayerNorm(epsilon=1e-5, reduction_axes=(-2, -1), feature_axes=(-2, -1), use_fast_variance=False)
    ours = LayerNormLC()
    assert jax.tree.map(jnp.shape, ours.init(jax.random.key(0), x)) == jax.tree.map(
        jnp.shape, flax_ln.init(jax.random.key(0), x))

    def loss_flax(x, s, b):
        return jnp.sum((flax_ln.apply({"params": {"scale": s, "bias": b}}, x) - target) ** 3)

    def loss_ours(x, s, b):
        return jnp.sum((layer_norm_lc(x, s, b) - target) ** 3)

    np.testing.assert_allclose(loss_ours(x, scale, bias), loss_flax(x, scale, bias), rtol=1e-5)
    for got, want in zip(jax.grad(loss_ours, (0, 1, 2))(x, scale, bias), jax.grad(loss_flax, (0, 1, 2))(x, scale, bias)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-4)
    # and against torch's LayerNorm([C, L]) on the channels-first layout
    torch_ln = torch.nn.LayerNorm([8, 50])
    with torch.no_grad():
        torch_ln.weight.copy_(torch.from_numpy(np.asarray(scale).T.copy()))
        torch_ln.bias.copy_(torch.from_numpy(np.asarray(bias).T.copy()))
        expected = torch_ln(torch.from_numpy(np.asarray(x).transpose(0, 2, 1).copy())).numpy().transpose(0, 2, 1)
    np.testing.assert_allclose(np.asarray(layer_norm_lc(x, scale, bias)), expected, atol=1e-5)


def test_dropout_only_in_training_and_deterministic_given_the_key():
    model = BindingPredictorCNN(length=50)
    x = jnp.asarray(random_one_hot(np.random.default_rng(4), 4, 50))
    variables = model.init(jax.random.key(0), x)
    evaluated = model.apply(variables, x)
    np.testing.assert_array_equal(np.asarray(model.apply(variables, x, train=False, rngs={"dropout": jax.random.key(1)})),
                                  np.asarray(evaluated))
    first = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(1)})
    again = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(1)})
    other = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(2)})
    np.testing.assert_array_equal(np.asarray(first), np.asarray(again))
    assert np.abs(np.asarray(first) - np.asarray(evaluated)).max() > 1e-3
    assert np.abs(np.asarray(first) - np.asarray(other)).max() > 1e-3
    with pytest.raises(Exception, match="dropout"):  # flax: no 'dropout' RNG given
        model.apply(variables, x, train=True)
    # dropout_rate 0 is the identity even in training
    plain = BindingPredictorCNN(length=50, dropout_rate=0.0)
    np.testing.assert_array_equal(np.asarray(plain.apply(variables, x, train=True, rngs={"dropout": jax.random.key(1)})),
                                  np.asarray(evaluated))


def test_dropout16_keeps_the_right_fraction_and_scales_as_torch():
    x = jnp.full((1000, 999), 2.0)  # an odd size: the last 32-bit word is half used
    for rate in (0.2, 0.5):
        out = np.asarray(Dropout16(rate).apply({}, x, False, rngs={"dropout": jax.random.key(0)}))
        kept = out != 0
        assert abs(kept.mean() - (1 - rate)) < 5 * np.sqrt(rate * (1 - rate) / kept.size)
        np.testing.assert_allclose(out[kept], 2.0 / (1 - rate), rtol=1e-6)
        # element i and element i + n_words share a 32-bit word (low, high half): independent
        flat, words = kept.ravel().astype(np.float64), (kept.size + 1) // 2
        low, high = flat[:kept.size - words], flat[words:]
        assert abs(np.corrcoef(low, high)[0, 1]) < 0.01
    np.testing.assert_array_equal(np.asarray(Dropout16(0.2).apply({}, x, True)), np.asarray(x))
    np.testing.assert_array_equal(np.asarray(Dropout16(0.0).apply({}, x, False)), np.asarray(x))


def test_one_adamw_step_matches_torch():
    """Same weights, same batch, no dropout: equal loss and gradients; one AdamW step (lr
    1e-3, weight decay 1e-5) in torch and optax.adamw gives the same parameters."""
    length, batch = 60, 16
    torch.manual_seed(3)
    reference = perturbed(TorchCNN(C, BLOCKS, K, 0.0, length=length)).train()
    rng = np.random.default_rng(3)
    x = random_one_hot(rng, batch, length)
    y = rng.standard_normal((batch, length)).astype(np.float32)
    params = cnn_params_from_torch(reference.state_dict())

    optimizer = torch.optim.AdamW(reference.parameters(), lr=1e-3, weight_decay=1e-5)
    optimizer.zero_grad()
    torch_loss = torch.nn.functional.mse_loss(reference(torch.from_numpy(x.transpose(0, 2, 1).copy())),
                                              torch.from_numpy(y))
    torch_loss.backward()
    torch_grads = cnn_params_from_torch({k: p.grad for k, p in reference.named_parameters()})
    optimizer.step()
    expected = cnn_params_from_torch(reference.state_dict())

    model = BindingPredictorCNN(length=length, dropout_rate=0.0)

    def loss_fn(p):
        return jnp.mean((model.apply({"params": p}, x, train=True, rngs={"dropout": jax.random.key(0)}) - y) ** 2)

    tx = optax.adamw(1e-3, b1=0.9, b2=0.999, eps=1e-8, weight_decay=1e-5)
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, _ = tx.update(grads, tx.init(params), params)
    updated = optax.apply_updates(params, updates)
    assert abs(float(loss) - torch_loss.item()) < 1e-5
    for (path, got), want in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(torch_grads)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=1e-4,
                                   err_msg=jax.tree_util.keystr(path))
    # Adam's first step is lr * g / (|g| + eps): where |g| is near eps (1e-8) float rounding of
    # g moves it by up to lr. Elsewhere (g = 0, or |g| > 1e-6: all but a few dozen) it must
    # agree to 1e-5.
    tiny = 0
    for (path, got), want, g in zip(jax.tree_util.tree_leaves_with_path(updated), jax.tree.leaves(expected),
                                    jax.tree.leaves(torch_grads)):
        g = np.abs(np.asarray(g))
        got, want, conditioned = np.asarray(got), np.asarray(want), (g > 1e-6) | (g == 0)
        np.testing.assert_allclose(got[conditioned], want[conditioned], atol=1e-5, rtol=0,
                                   err_msg=jax.tree_util.keystr(path))
        assert np.abs(got - want).max() <= 2e-3, jax.tree_util.keystr(path)
        tiny += int((~conditioned).sum())
    assert tiny < 2e-3 * sum(a.size for a in jax.tree.leaves(params))
    moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), updated, params)
    assert min(jax.tree.leaves(moved)) > 5e-4  # every parameter took a step of about lr


def test_initialisation_follows_the_study():
    # sampling tolerance: the std of n normal draws is within a few sigma / sqrt(2n)
    model = BindingPredictorCNN()
    params = model.init(jax.random.key(5), jnp.zeros((1, LENGTH, 4)))["params"]
    kaiming_std = np.sqrt(2.0 / (C * K))  # torch fan_out = out_channels * k
    first = np.asarray(params["initial_conv"]["kernel"])
    assert abs(first.std() / kaiming_std - 1) < 5 / np.sqrt(2 * first.size)
    blocks = np.concatenate([np.asarray(params[f"block_{i}"][c]["kernel"]).ravel()
                             for i in range(BLOCKS) for c in ("conv1", "conv2")])
    assert abs(blocks.std() / kaiming_std - 1) < 5 / np.sqrt(2 * blocks.size)
    assert abs(blocks.mean()) < 5 * kaiming_std / np.sqrt(blocks.size)
    final = np.asarray(params["final_conv"]["kernel"])
    bound = np.sqrt(6.0 / (C + 1))  # xavier_uniform: fan_in C, fan_out 1
    assert np.abs(final).max() <= bound and np.abs(final).max() > 0.5 * bound
    np.testing.assert_array_equal(np.asarray(params["final_conv"]["bias"]), 0.0)
    for norm in [params["initial_norm"]] + [params[f"block_{i}"][n] for i in range(BLOCKS) for n in ("norm1", "norm2")]:
        np.testing.assert_array_equal(np.asarray(norm["scale"]), 1.0)
        np.testing.assert_array_equal(np.asarray(norm["bias"]), 0.0)
    # the torch model initialises the same way
    torch.manual_seed(5)
    state = TorchCNN().state_dict()
    torch_blocks = torch.cat([state[f"res_blocks.{i}.{c}.weight"].ravel() for i in range(BLOCKS) for c in ("conv1", "conv2")])
    assert abs(torch_blocks.std().item() / kaiming_std - 1) < 5 / np.sqrt(2 * blocks.size)
    assert state["final_conv.weight"].abs().max().item() <= bound and state["final_conv.bias"].item() == 0.0


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s.pop("res_blocks.1.norm2.bias"), "missing key res_blocks.1.norm2.bias"),
        (lambda s: s.pop("final_conv.bias"), "missing key final_conv.bias"),
        (lambda s: s.pop("initial_conv.weight"), "missing key initial_conv.weight"),
        (lambda s: s.update({"res_blocks.0.conv1.weight": torch.zeros(C, C, 5)}),
         "res_blocks.0.conv1.weight has shape (32, 32, 5), expected (32, 32, 3)"),
        (lambda s: s.update({"initial_conv.weight": torch.zeros(C, 5, K)}),
         "initial_conv.weight has shape (32, 5, 3), expected (C, 4, k)"),
        (lambda s: s.update({"res_blocks.2.norm1.weight": torch.zeros(C, 200)}),
         "res_blocks.2.norm1.weight has shape (32, 200), expected (32, 300)"),
        (lambda s: s.update({"res_blocks.0.conv1.bias": torch.zeros(C)}),
         "unexpected key res_blocks.0.conv1.bias; the model's initial and block convolutions have no bias"),
        (lambda s: s.update({"res_blocks.4.conv1.weight": torch.zeros(C, C, K)}), "missing key res_blocks.3.conv1.weight"),
        (lambda s: s.update({"final_conv.bias": torch.full((1,), float("nan"))}), "final_conv.bias contains NaN"),
        (lambda s: s.update({"initial_norm.weight": torch.zeros(C, LENGTH, dtype=torch.int64)}),
         "expected floating-point weights"),
    ],
)
def test_bad_state_dicts_name_the_problem(torch_model, edit, message):
    state = _state(torch_model)
    edit(state)
    with pytest.raises(InputError) as err:
        cnn_params_from_torch(state)
    assert str(err.value).startswith("state_dict: ")
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_expected_configuration_and_other_models(torch_model, tmp_path):
    with pytest.raises(InputError, match="built for length 300, expected length 50"):
        cnn_params_from_torch(torch_model.state_dict(), length=50)
    with pytest.raises(InputError, match="has 3 residual blocks, expected num_blocks 4"):
        cnn_params_from_torch(torch_model.state_dict(), num_blocks=4)
    lstm = torch.nn.LSTM(4, 16, batch_first=True, bidirectional=True)
    state = {f"lstm.{k}": v for k, v in lstm.state_dict().items()}
    with pytest.raises(InputError, match=r"^state_dict: not a state_dict of the TF-binding BindingPredictorCNN"):
        cnn_params_from_torch(state)
    with pytest.raises(InputError, match="expected a state_dict"):
        cnn_params_from_torch([1, 2, 3])
    path = tmp_path / "lstm.pt"
    torch.save(state, path)
    with pytest.raises(InputError) as err:
        load_torch_cnn_checkpoint(path)
    assert str(err.value).startswith(f"{path}: not a state_dict of the TF-binding BindingPredictorCNN")
    # numpy values and a DataParallel prefix convert the same
    numpy_state = {f"module.{k}": v.numpy() for k, v in torch_model.state_dict().items()}
    jax.tree.map(np.testing.assert_array_equal, cnn_params_from_torch(numpy_state),
                 cnn_params_from_torch(torch_model.state_dict()))


def test_checkpoint_files(torch_model, tmp_path):
    path = tmp_path / "cnn.pt"
    torch.save(torch_model.state_dict(), path)
    params = load_torch_cnn_checkpoint(path, num_blocks=BLOCKS, length=LENGTH)
    nested = tmp_path / "training.pt"
    torch.save({"epoch": 3, "model_state_dict": torch_model.state_dict()}, nested)
    jax.tree.map(np.testing.assert_array_equal, load_torch_cnn_checkpoint(nested), params)
    with pytest.raises(InputError, match="no such file"):
        load_torch_cnn_checkpoint(tmp_path / "absent.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match=r"garbage\.pt: not a readable PyTorch checkpoint"):
        load_torch_cnn_checkpoint(garbage)
    whole = tmp_path / "whole_model.pt"
    torch.save(torch_model, whole)  # a pickled module: weights_only refuses it
    with pytest.raises(InputError, match=r"whole_model\.pt: holds a pickled .*BindingPredictorCNN, not only tensors"):
        load_torch_cnn_checkpoint(whole)


def test_pearson_r_and_the_torch_reference_loop():
    rng = np.random.default_rng(6)
    a, b = rng.standard_normal(500), rng.standard_normal(500)
    b = a + b
    assert pearson_r(a, b) == pytest.approx(np.corrcoef(a, b)[0, 1], abs=1e-12)
    b_nan = b.copy()
    b_nan[:10] = np.nan
    assert pearson_r(a, b_nan) == pytest.approx(np.corrcoef(a[10:], b[10:])[0, 1], abs=1e-12)
    assert pearson_r(a, np.ones_like(a)) == 0.0 and pearson_r(a[:1], b[:1]) == 0.0

    x, y = random_data(40, length=30, seed=0)
    result = run_torch_reference(x, y, np.arange(32), np.arange(32, 40), lr=1e-2, epochs=2, batch_size=16,
                                 threads=1, num_channels=8, num_blocks=1)
    assert [row["epoch"] for row in result["history"]] == [1, 2]
    assert set(result["history"][0]) == {"epoch", "train_loss", "val_loss", "val_pearson", "epoch_seconds"}
    best = min(result["history"], key=lambda row: row["val_loss"])
    assert (result["best_epoch"], result["best_val_loss"], result["best_val_pearson"]) == (
        best["epoch"], best["val_loss"], best["val_pearson"])
    # lr 0: the validation loss never improves after epoch 1; patience 2 stops after epoch 3
    stuck = run_torch_reference(x, y, np.arange(32), np.arange(32, 40), lr=0.0, epochs=10, batch_size=16,
                                patience=2, threads=1, num_channels=8, num_blocks=1)
    assert len(stuck["history"]) == 3 and stuck["stopped_early"] and stuck["best_epoch"] == 1
    # the returned model carries the best epoch's weights: its validation MSE is the best one
    predictions = torch_forward(result["model"], x[32:])
    assert np.mean((predictions.astype(np.float64) - y[32:]) ** 2) == pytest.approx(result["best_val_loss"], rel=1e-5)
