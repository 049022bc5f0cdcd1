"""Random rotation of image/mask batches: convention, modes, per-example keys, jit."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from molml_jax.data.augment import example_angles, random_rotation
from molml_jax.data.augment import rotate as rotate_eager

# jitted once per shape: much faster in tests than op-by-op dispatch
rotate = jax.jit(rotate_eager, static_argnums=2)


def numpy_rotate(img: np.ndarray, angle: float, mode: str) -> np.ndarray:
    """Independent per-pixel loop: the inverse map of torchvision's F.rotate (see augment.py)."""
    h, w = img.shape
    cy, cx = (h - 1) / 2, (w - 1) / 2
    a = math.radians(angle)
    out = np.zeros_like(img, dtype=np.float64)

    def px(r, c):
        return float(img[r, c]) if 0 <= r < h and 0 <= c < w else 0.0

    for i in range(h):
        for j in range(w):
            x, y = j - cx, i - cy
            col = math.cos(a) * x - math.sin(a) * y + cx
            row = math.sin(a) * x + math.cos(a) * y + cy
            if mode == "nearest":
                out[i, j] = px(round(row), round(col))
            else:
                r0, c0 = math.floor(row), math.floor(col)
                fr, fc = row - r0, col - c0
                out[i, j] = (
                    px(r0, c0) * (1 - fr) * (1 - fc) + px(r0, c0 + 1) * (1 - fr) * fc
                    + px(r0 + 1, c0) * fr * (1 - fc) + px(r0 + 1, c0 + 1) * fr * fc
                )
    return out


rotation = jax.jit(random_rotation, static_argnums=2, static_argnames=("mask_mode",))


def batch_of(b: int, size: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    x = rng.random((b, size, size), dtype=np.float32)
    y = (rng.random((b, size, size)) > 0.5).astype(np.float32)
    return {"x": jnp.asarray(x), "y": jnp.asarray(y), "_position": jnp.arange(b, dtype=jnp.int32)}


def test_zero_degrees_is_identity():
    batch = batch_of(3, 16)
    assert random_rotation(jax.random.key(0), batch, degrees=0) is batch
    out = rotate(batch["x"], jnp.zeros(3), "bilinear")
    np.testing.assert_array_equal(np.asarray(out), np.asarray(batch["x"]))
    np.testing.assert_array_equal(np.asarray(rotate(batch["x"], 0.0, "nearest")), np.asarray(batch["x"]))


@pytest.mark.parametrize("size", [7, 8])
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_quarter_turns_match_rot90(size, mode):
    """+90 degrees is counter-clockwise as displayed, i.e. np.rot90 with k=1."""
    img = np.random.default_rng(size).random((1, size, size), dtype=np.float32)
    for angle, k in [(90, 1), (180, 2), (-90, -1), (270, 3)]:
        got = np.asarray(rotate(jnp.asarray(img), jnp.array([float(angle)]), mode))[0]
        np.testing.assert_allclose(got, np.rot90(img[0], k), atol=2e-5, err_msg=f"{angle} degrees")


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_matches_independent_numpy_loop(mode):
    rng = np.random.default_rng(1)
    img = rng.random((2, 9, 12), dtype=np.float32)
    angles = [23.0, -141.5]
    got = np.asarray(rotate(jnp.asarray(img), jnp.array(angles), mode))
    for g, im, a in zip(got, img, angles):
        np.testing.assert_allclose(g, numpy_rotate(im, a, mode), atol=1e-5)


def test_matches_torchvision_grid_sample():
    """torchvision.transforms.functional.rotate(t, angle) re-built from its source:
    _get_inverse_affine_matrix(center=0, -angle), _gen_affine_grid, then grid_sample."""
    torch = pytest.importorskip("torch")
    img = np.random.default_rng(2).random((1, 1, 20, 20), dtype=np.float32)
    for angle in (33.0, -100.0):
        rot = math.radians(-angle)
        theta = torch.tensor(
            [math.cos(rot), math.sin(rot), 0.0, -math.sin(rot), math.cos(rot), 0.0]
        ).reshape(1, 2, 3)
        h = w = 20
        base = torch.ones(1, h, w, 3)
        base[..., 0] = torch.linspace(-w * 0.5 + 0.5, w * 0.5 - 0.5, w)
        base[..., 1] = torch.linspace(-h * 0.5 + 0.5, h * 0.5 - 0.5, h)[:, None]
        grid = (base.view(1, h * w, 3) @ (theta.transpose(1, 2) / torch.tensor([0.5 * w, 0.5 * h])))
        for mode in ("bilinear", "nearest"):
            ref = torch.nn.functional.grid_sample(
                torch.from_numpy(img), grid.view(1, h, w, 2), mode=mode, padding_mode="zeros",
                align_corners=False,
            )[0, 0].numpy()
            got = np.asarray(rotate(jnp.asarray(img[:, 0]), jnp.array([angle]), mode))[0]
            np.testing.assert_allclose(got, ref, atol=3e-5)


def test_nearest_mask_stays_binary_and_bilinear_interpolates():
    batch = batch_of(4, 32)
    near = rotation(jax.random.key(3), batch, 180.0, mask_mode="nearest")
    assert set(np.unique(np.asarray(near["y"]))) <= {0.0, 1.0}
    lin = rotation(jax.random.key(3), batch, 180.0)
    assert ((np.asarray(lin["y"]) > 0) & (np.asarray(lin["y"]) < 1)).any()
    np.testing.assert_array_equal(np.asarray(near["x"]), np.asarray(lin["x"]))  # same angles


def test_image_and_mask_get_the_same_angle():
    batch = batch_of(4, 24)
    batch["y"] = batch["x"]
    out = rotation(jax.random.key(5), batch, 180.0)
    np.testing.assert_array_equal(np.asarray(out["x"]), np.asarray(out["y"]))
    assert not np.allclose(np.asarray(out["x"]), np.asarray(batch["x"]))
    np.testing.assert_array_equal(np.asarray(out["_position"]), np.arange(4))


def test_angles_depend_only_on_key_and_position():
    key = jax.random.key(11)
    batch = batch_of(6, 16)
    whole = rotation(key, batch, 180.0)
    halves = [
        rotation(key, {k: v[s] for k, v in batch.items()}, 180.0)
        for s in (slice(0, 3), slice(3, 6))
    ]
    for name in ("x", "y"):
        joined = np.concatenate([np.asarray(h[name]) for h in halves])
        np.testing.assert_allclose(np.asarray(whole[name]), joined, atol=1e-5)
    angles = np.asarray(jax.jit(example_angles, static_argnums=2)(key, jnp.arange(1000), 30.0))
    assert angles.min() >= -30 and angles.max() <= 30 and angles.std() > 15
    assert len(np.unique(angles)) > 990  # distinct per position (float32 may collide)


def test_jit_and_channels():
    batch = batch_of(4, 32)
    f = jax.jit(functools.partial(random_rotation, degrees=180.0, mask_mode="nearest"))
    eager = random_rotation(jax.random.key(0), batch, 180.0, mask_mode="nearest")
    jitted = f(jax.random.key(0), batch)
    for name in ("x", "y"):
        np.testing.assert_allclose(np.asarray(jitted[name]), np.asarray(eager[name]), atol=1e-5)
    # a trailing channel axis rotates each channel like the plane alone
    two = jnp.stack([batch["x"], batch["y"]], axis=-1)
    angles = jnp.array([10.0, -20.0, 95.0, 181.0])
    out = rotate(two, angles, "bilinear")
    alone = rotate(batch["y"], angles, "bilinear")
    np.testing.assert_allclose(np.asarray(out[..., 1]), np.asarray(alone), atol=1e-5)
