"""Segmentation U-Net: the Flax model against the PyTorch reference (shapes, parameter
count, eval outputs with ported weights and running statistics), the sub-pixel transposed
convolution against torch's ConvTranspose2d and flax's nn.ConvTranspose (values and
gradients), BatchNorm's running statistics and mask, the Dice loss, and the converter's errors."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from benchmarks.torch_models import UNet as TorchUNet  # noqa: E402
from benchmarks.torch_segmentation import dice_loss  # noqa: E402
from molml_jax.errors import InputError  # noqa: E402
from molml_jax.interop import load_torch_unet_checkpoint, unet_config_from_variables, unet_variables_from_torch  # noqa: E402
from molml_jax.models.unet import MaskedBatchNorm, UNet, flax_conv_transpose  # noqa: E402
from molml_jax.ops.conv_transpose import conv_transpose_subpixel  # noqa: E402
from molml_jax.ops.pooling import max_pool_2x2  # noqa: E402

SIZE = 32


def apply_eval(variables, x, subpixel=True):
    return _apply_eval(variables, jnp.asarray(x), subpixel)


def apply_train(variables, x, mask=None):
    """(logits, {'batch_stats': updated}) in train mode."""
    return _apply_train(variables, jnp.asarray(x), None if mask is None else jnp.asarray(mask))


_apply_eval = jax.jit(lambda v, x, subpixel: UNet(subpixel=subpixel).apply(v, x), static_argnums=2)
_apply_train = jax.jit(lambda v, x, mask: UNet().apply(v, x, train=True, mask=mask, mutable=["batch_stats"]))


@pytest.fixture(scope="module")
def torch_model():
    """The torch U-Net with non-trivial BatchNorm affine parameters and running statistics
    (defaults are 1 / 0: a mapping mistake would go unseen), in eval mode."""
    torch.manual_seed(0)
    model = TorchUNet()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(1 + 0.2 * torch.randn(n, generator=gen))
                module.bias.copy_(0.1 * torch.randn(n, generator=gen))
                module.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
                module.running_var.copy_(0.5 + torch.rand(n, generator=gen))
    return model.eval()


def test_shapes_and_parameter_count(torch_model):
    x = jnp.zeros((2, SIZE, 2 * SIZE))
    variables = jax.eval_shape(UNet().init, jax.random.key(0), x)
    assert jax.eval_shape(UNet().apply, variables, x).shape == (2, SIZE, 2 * SIZE)
    n_flax = sum(a.size for a in jax.tree.leaves(variables["params"]))
    n_torch = sum(p.numel() for p in torch_model.parameters())
    assert n_flax == n_torch
    n_stats = sum(a.size for a in jax.tree.leaves(variables["batch_stats"]))
    assert n_stats == sum(b.numel() for name, b in torch_model.named_buffers() if "running" in name)
    assert set(variables["params"]) == {"down_1", "down_2", "down_3", "down_4", "bridge",
                                         "up_1", "up_2", "up_3", "up_4", "final_conv"}
    ported = unet_variables_from_torch(torch_model.state_dict())
    assert jax.tree.map(lambda a: tuple(a.shape), ported) == jax.tree.map(lambda a: tuple(a.shape), dict(variables))
    assert unet_config_from_variables(ported) == {"num_kernel": 8, "kernel_size": 3}


@pytest.mark.parametrize("shape", [(1, 24, 32), (1, 32, 40), (32, 32)])
def test_bad_input_shape_raises(shape):
    with pytest.raises(ValueError, match="multiples of 16|grey images"):
        UNet().init(jax.random.key(0), jnp.zeros(shape))


def test_subpixel_equals_torch_and_flax_conv_transpose():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 7, 3)).astype(np.float32)  # odd, non-square sizes
    weight = rng.standard_normal((3, 4, 3, 3)).astype(np.float32)  # torch (in, out, kh, kw)
    bias = rng.standard_normal(4).astype(np.float32)
    layer = torch.nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1, output_padding=1)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(weight))
        layer.bias.copy_(torch.from_numpy(bias))
        expected = layer(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)
    kernel = jnp.asarray(weight.transpose(2, 3, 1, 0))
    got = conv_transpose_subpixel(jnp.asarray(x), kernel, jnp.asarray(bias))
    assert got.shape == (2, 10, 14, 4)
    np.testing.assert_allclose(got, expected, atol=1e-5)

    flax_layer = flax_conv_transpose(4)
    assert jax.tree.map(jnp.shape, flax_layer.init(jax.random.key(0), x)["params"]) == \
        {"kernel": kernel.shape, "bias": (4,)}

    cotangent = jnp.asarray(rng.standard_normal(expected.shape).astype(np.float32))

    def loss_subpixel(xx, k, b):
        return jnp.sum(conv_transpose_subpixel(xx, k, b) * cotangent)

    def loss_flax(xx, k, b):
        return jnp.sum(flax_layer.apply({"params": {"kernel": k, "bias": b}}, xx) * cotangent)

    args = (jnp.asarray(x), kernel, jnp.asarray(bias))
    np.testing.assert_allclose(flax_layer.apply({"params": {"kernel": kernel, "bias": bias}}, x), expected, atol=1e-5)
    for g_sub, g_flax in zip(jax.grad(loss_subpixel, argnums=(0, 1, 2))(*args),
                             jax.grad(loss_flax, argnums=(0, 1, 2))(*args)):
        np.testing.assert_allclose(g_sub, g_flax, rtol=1e-5, atol=1e-4)


def test_max_pool_values_and_tie_gradients_match_torch():
    # ReLU zeros make whole 2x2 windows tie: the gradient must go where torch sends it
    rng = np.random.default_rng(0)
    x = np.maximum(rng.standard_normal((2, 6, 8, 3)), 0.0).astype(np.float32)
    x[0, :2, :2, 0] = 1.5  # a window of four equal non-zero maxima
    cotangent = rng.standard_normal((2, 3, 4, 3)).astype(np.float32)
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2)).requires_grad_()
    pooled = torch.nn.functional.max_pool2d(xt, 2)
    (pooled * torch.from_numpy(cotangent.transpose(0, 3, 1, 2))).sum().backward()
    got, vjp = jax.vjp(max_pool_2x2, jnp.asarray(x))
    np.testing.assert_array_equal(got, pooled.detach().numpy().transpose(0, 2, 3, 1))
    (grad,) = vjp(jnp.asarray(cotangent))
    np.testing.assert_array_equal(grad, xt.grad.numpy().transpose(0, 2, 3, 1))
    assert float(grad[0, 0, 0, 0]) == cotangent[0, 0, 0, 0] and float(jnp.abs(grad[0, :2, :2, 0]).sum()) \
        == abs(cotangent[0, 0, 0, 0])
    flax_grad = jax.grad(lambda v: jnp.sum(nn.max_pool(v, (2, 2), strides=(2, 2)) * cotangent))(jnp.asarray(x))
    np.testing.assert_array_equal(grad, flax_grad)


def test_ported_weights_match_torch_in_eval(torch_model):
    rng = np.random.default_rng(2)
    x = rng.random((2, SIZE, 2 * SIZE), dtype=np.float32)
    with torch.no_grad():
        expected = torch_model(torch.from_numpy(x[:, None])).numpy()[:, 0]
    variables = unet_variables_from_torch(torch_model.state_dict())
    for subpixel in (True, False):
        logits = apply_eval(variables, x, subpixel)
        np.testing.assert_allclose(jax.nn.sigmoid(logits), expected, atol=1e-4)
        clear = np.abs(expected - 0.5) > 1e-4  # the same masks wherever 0.5 is not within rounding
        assert clear.mean() > 0.99
        np.testing.assert_array_equal((np.asarray(logits) > 0)[clear], (expected > 0.5)[clear])


def test_train_mode_matches_torch_and_updates_batch_stats(torch_model):
    """Train-mode outputs equal torch's (batch statistics); the running statistics follow
    momentum 0.9 with the biased batch variance (torch stores the unbiased one)."""
    rng = np.random.default_rng(3)
    x = rng.random((3, SIZE, SIZE), dtype=np.float32)
    variables = unet_variables_from_torch(torch_model.state_dict())
    logits, updated = apply_train(variables, x)
    saved = {k: v.clone() for k, v in torch_model.state_dict().items()}
    torch_model.train()
    try:
        with torch.no_grad():
            block = torch_model.down1.conv_block  # the first BatchNorm's batch statistics
            h = block.relu1(block.conv1(torch.from_numpy(x[:, None])))
            mean, var = h.mean(dim=(0, 2, 3)).numpy(), h.var(dim=(0, 2, 3), unbiased=False).numpy()
            old_mean, old_var = block.bn1.running_mean.numpy().copy(), block.bn1.running_var.numpy().copy()
            expected = torch_model(torch.from_numpy(x[:, None])).numpy()[:, 0]
    finally:
        torch_model.load_state_dict(saved)
        torch_model.eval()
    np.testing.assert_allclose(jax.nn.sigmoid(logits), expected, atol=1e-4)
    stats = updated["batch_stats"]["down_1"]["block"]["norm_1"]
    np.testing.assert_allclose(stats["mean"], 0.9 * old_mean + 0.1 * mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats["var"], 0.9 * old_var + 0.1 * var, rtol=1e-5, atol=1e-6)


def test_mask_excludes_padded_examples(torch_model):
    """Padded examples (mask false) do not enter the batch statistics: the statistics and
    the real examples' outputs equal those of the real examples alone (here: the real pair
    twice, which has the same mean and biased variance, so one compiled shape serves)."""
    rng = np.random.default_rng(4)
    real = rng.random((2, SIZE, SIZE), dtype=np.float32)
    padded = np.concatenate([real, np.full((2, SIZE, SIZE), 50.0, np.float32)])
    variables = unet_variables_from_torch(torch_model.state_dict())
    out_real, stats_real = apply_train(variables, np.concatenate([real, real]), np.ones(4, bool))
    out_masked, stats_masked = apply_train(variables, padded, np.array([True, True, False, False]))
    np.testing.assert_allclose(out_masked[:2], out_real[:2], atol=1e-5)
    for a, b in zip(jax.tree.leaves(stats_masked), jax.tree.leaves(stats_real)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    _, stats_unmasked = apply_train(variables, padded, np.ones(4, bool))
    first = stats_unmasked["batch_stats"]["down_1"]["block"]["norm_1"]["mean"]
    assert not np.allclose(first, stats_real["batch_stats"]["down_1"]["block"]["norm_1"]["mean"])


def test_masked_batch_norm_equals_flax_and_sums_over_devices():
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.standard_normal((4, 6, 5, 3)).astype(np.float32) * 2 + 1)
    ours = MaskedBatchNorm()
    flax_bn = nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5, use_fast_variance=False)
    variables = flax_bn.init(jax.random.key(0), x)
    y_flax, s_flax = flax_bn.apply(variables, x, mutable=["batch_stats"])
    y_ours, s_ours = ours.apply(variables, x, mutable=["batch_stats"])
    np.testing.assert_allclose(y_ours, y_flax, atol=1e-5)
    for a, b in zip(jax.tree.leaves(s_ours), jax.tree.leaves(s_flax)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # two "devices" (vmap with an axis name), one of them holding only padding
    mask = jnp.array([True, True, True, False])
    per_device = MaskedBatchNorm(axis_name="devices")
    y_dev, s_dev = jax.vmap(lambda xx, mm: per_device.apply(variables, xx, mm, mutable=["batch_stats"]),
                            axis_name="devices")(jnp.stack([x[:2], jnp.concatenate([x[2:3], x[2:3] * 0 + 9])]),
                                                 jnp.stack([mask[:2], mask[2:]]))
    y_ref, s_ref = ours.apply(variables, x[:3], mutable=["batch_stats"])
    np.testing.assert_allclose(y_dev.reshape(4, *x.shape[1:])[:3], y_ref, atol=1e-5)
    for a, b in zip(jax.tree.leaves(s_dev), jax.tree.leaves(s_ref)):
        np.testing.assert_allclose(a[0], b, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(a[1], b, rtol=1e-5, atol=1e-6)


def test_dice_loss():
    """Per image (rows here), then the batch mean; the reference's and the pipeline's agree."""
    from molml_jax.metrics.segmentation import dice_loss_jax

    p = torch.tensor([[0.9, 0.1], [0.8, 0.0]])
    t = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    expected = ((1 - (2 * 0.9 + 1) / (1.0 + 1 + 1)) + (1 - (2 * 0.8 + 1) / (0.8 + 1 + 1))) / 2
    assert dice_loss(p, t).item() == pytest.approx(expected, rel=1e-6)
    assert float(jnp.mean(dice_loss_jax(jnp.asarray(p.numpy()), jnp.asarray(t.numpy())))) == pytest.approx(expected, rel=1e-6)
    assert dice_loss(torch.zeros(2, 2), torch.zeros(2, 2)).item() == 0.0


def test_reference_rotation_equals_the_pipeline_rotation():
    """The torch reference's per-example rotation (grid_sample) and molml_jax's (gathers)."""
    from benchmarks.torch_segmentation import rotate as torch_rotate
    from molml_jax.data.augment import rotate

    x = np.random.default_rng(5).random((3, 24, 24), dtype=np.float32)
    angles = np.array([33.0, -100.0, 171.5], np.float32)
    for mode in ("bilinear", "nearest"):
        expected = torch_rotate(torch.from_numpy(x[:, None]), torch.from_numpy(angles), mode)[:, 0].numpy()
        got = np.asarray(rotate(jnp.asarray(x), jnp.asarray(angles), mode))
        if mode == "bilinear":
            np.testing.assert_allclose(got, expected, atol=3e-5)
        else:  # identical but for exact half-way ties
            assert np.mean(np.abs(got - expected) > 1e-6) < 0.01


def test_torch_reference_trains_and_tests_on_a_split():
    from benchmarks.torch_segmentation import run_torch_reference

    rng = np.random.default_rng(0)
    masks = (rng.random((10, 16, 16)) > 0.6).astype(np.float32)
    images = np.clip(masks * 0.6 + rng.normal(0.2, 0.1, masks.shape), 0, 1).astype(np.float32)
    split = {"train": np.arange(6), "val": np.arange(6, 8), "test": np.arange(8, 10)}
    out = run_torch_reference(images, masks, split, epochs=2, seed=0, threads=1)
    assert [row["epoch"] for row in out["history"]] == [1, 2]
    assert out["best_epoch"] in (1, 2) and out["test_probabilities"].shape == (2, 16, 16)
    for key in ("test_dice", "test_iou", "test_map"):
        assert 0.0 <= out[key] <= 1.0
    again = run_torch_reference(images, masks, split, epochs=2, seed=0, threads=1)
    assert again["history"][-1]["train_loss"] == out["history"][-1]["train_loss"]  # seeded


def test_converter_errors(torch_model, tmp_path):
    state = torch_model.state_dict()
    with pytest.raises(InputError, match="not a state_dict of the segmentation U-Net"):
        unet_variables_from_torch({"lstm.weight_ih_l0": torch.zeros(4, 4)})
    with pytest.raises(InputError, match="missing key up4.up.weight"):
        unet_variables_from_torch({k: v for k, v in state.items() if k != "up4.up.weight"})
    bad = dict(state)
    bad["up2.up.weight"] = torch.zeros(32, 16, 3, 3)
    with pytest.raises(InputError, match=r"up2.up.weight has shape \(32, 16, 3, 3\), expected \(32, 32, 3, 3\)"):
        unet_variables_from_torch(bad)
    with pytest.raises(InputError, match="unexpected key extra.weight"):
        unet_variables_from_torch({**state, "extra.weight": torch.zeros(1)})
    with pytest.raises(InputError, match="num_kernel 8, expected 16"):
        unet_variables_from_torch(state, num_kernel=16)
    with pytest.raises(InputError, match="expected a state_dict"):
        unet_variables_from_torch([1, 2])
    path = tmp_path / "unet.pt"
    torch.save({"model_state_dict": {"module." + k: v for k, v in state.items()}}, path)
    loaded = load_torch_unet_checkpoint(path)
    direct = unet_variables_from_torch(state)
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(direct)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(InputError, match="no such file"):
        load_torch_unet_checkpoint(tmp_path / "missing.pt")
