"""Tiled prediction: tile starts, blending windows, streaming, and tiled = untiled."""

import numpy as np
import pytest

from molml_jax.data.tiles import (
    WEIGHT_FLOOR,
    _sigmoid,
    blend_window,
    check_tiling,
    iter_tiled_rows,
    predict_tiled,
    tile_starts,
)
from molml_jax.errors import InputError

UNET_REACH = 166  # receptive-field half-width bound of the k = 3 U-Net (tiles.py docstring)


def untiled(predict_logits, x, multiple=16):
    """What segmentation.predict_arrays does: pad to multiples of 16, one piece, crop."""
    h, w = x.shape
    padded = np.pad(x.astype(np.float32), ((0, -h % multiple), (0, -w % multiple)))
    return _sigmoid(predict_logits(padded[None]))[0, :h, :w]


def pointwise(x):
    return 3.0 * x - 1.5


@pytest.mark.parametrize("size,tile,overlap,expected", [
    (64, 128, 32, [0]),
    (128, 128, 32, [0]),
    (144, 128, 32, [0, 16]),
    (512, 256, 64, [0, 192, 256]),
    (512, 128, 0, [0, 128, 256, 384]),
    (400, 128, 40, [0, 80, 160, 240, 272]),  # step 88 rounded down to 80
])
def test_tile_starts_cases(size, tile, overlap, expected):
    assert tile_starts(size, tile, overlap) == expected


@pytest.mark.parametrize("size", [16, 160, 512, 1008, 2000 + -2000 % 16])
@pytest.mark.parametrize("tile,overlap", [(128, 0), (128, 17), (128, 64), (256, 100), (64, 48)])
def test_tile_starts_cover_aligned_and_overlap(size, tile, overlap):
    starts = tile_starts(size, tile, overlap)
    side = min(tile, size)
    assert starts[0] == 0 and starts[-1] + side == size
    assert all(s % 16 == 0 for s in starts)
    assert all(b > a for a, b in zip(starts, starts[1:]))  # increasing, no duplicates
    assert all(a + side - b >= overlap for a, b in zip(starts, starts[1:]))


def test_blend_window_shape_symmetry_floor():
    w = blend_window(64, 48, 16)
    assert w.shape == (64, 48) and w.dtype == np.float32
    np.testing.assert_array_equal(w, w[::-1, :])
    np.testing.assert_array_equal(w, w[:, ::-1])
    assert w[16:48, 16:32].min() == 1.0 and w.max() == 1.0
    assert w.min() >= WEIGHT_FLOOR and w[0, 0] < w[0, 8] < w[0, 16]
    assert blend_window(8, 8, 0).min() == 1.0
    edge = blend_window(32, 32, 8, edges=(False, True, False, True))  # image border top/left
    assert edge[0, 0] == 1.0 and edge[-1, -1] < 0.1


@pytest.mark.parametrize("tile,overlap,message", [
    (8, 0, "--tile 8 is smaller than the network's minimum of 16 pixels"),
    (100, 0, "--tile 100 must be a multiple of 16"),
    (512, -1, "--overlap -1 must not be negative"),
    (512, 512, "--overlap 512 must be smaller than --tile 512"),
    (512, 500, "--overlap 500 must be at most --tile 512 minus 16"),
])
def test_check_tiling_errors(tile, overlap, message):
    with pytest.raises(InputError, match=message):
        check_tiling(tile, overlap)
    check_tiling(512, 64)
    check_tiling(512, 37)  # any overlap is fine


def test_rows_streamed_once_bounded_bands_one_shape():
    x = np.random.default_rng(0).random((2000, 300)).astype(np.float32)
    shapes = []

    def fake(batch):
        shapes.append(batch.shape)
        return pointwise(batch)

    seen = np.zeros(2000, int)
    previous_end = 0
    for start, band in iter_tiled_rows(fake, x, tile=128, overlap=32, batch_size=2):
        assert start == previous_end and band.shape[1] == 300 and band.dtype == np.float32
        assert 0 < band.shape[0] <= 128
        seen[start:start + band.shape[0]] += 1
        previous_end = start + band.shape[0]
    assert (seen == 1).all()
    assert set(shapes) == {(2, 128, 128)}
    n_rows, n_cols = len(tile_starts(2000, 128, 32)), len(tile_starts(304, 128, 32))
    assert len(shapes) == n_rows * -(-n_cols // 2)  # batches within a tile row; short ones filled


@pytest.mark.parametrize("shape", [(200, 300), (517, 33), (64, 64)])
@pytest.mark.parametrize("tile,overlap", [(32, 0), (64, 17), (128, 64), (48, 32)])
def test_pointwise_model_tiled_equals_untiled(shape, tile, overlap):
    x = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    got = predict_tiled(pointwise, x, tile=tile, overlap=overlap, batch_size=3)
    np.testing.assert_array_equal(got, untiled(pointwise, x))


def test_small_image_is_one_piece():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(50, 70)).astype(np.float32)
    kernel = rng.normal(size=(5, 5))

    def smoothing(batch):  # not pointwise: a tile would see its own zero border
        from scipy.ndimage import convolve
        return np.stack([convolve(b, kernel, mode="constant") for b in batch]).astype(np.float32)

    np.testing.assert_array_equal(predict_tiled(smoothing, x, tile=128, overlap=32), untiled(smoothing, x))


def test_raw_uint16_with_scale_offset_equals_normalising_first():
    raw = np.random.default_rng(3).integers(0, 65536, size=(150, 90), dtype=np.uint16)
    scale, offset = 1 / 65535, -0.5
    normalised = raw.astype(np.float32) * np.float32(scale) + np.float32(offset)
    a = predict_tiled(pointwise, raw, scale=scale, offset=offset, tile=64, overlap=16)
    b = predict_tiled(pointwise, normalised, tile=64, overlap=16)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, untiled(pointwise, normalised))


def test_tta_pointwise_is_unchanged():
    x = np.random.default_rng(4).normal(size=(100, 140)).astype(np.float32)
    a = predict_tiled(pointwise, x, tile=64, overlap=16, tta=True)
    np.testing.assert_allclose(a, predict_tiled(pointwise, x, tile=64, overlap=16), rtol=0, atol=1e-7)


def test_tta_averages_the_eight_transforms():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(40, 60)).astype(np.float32)  # one non-square 48 x 64 tile

    def skewed(batch):  # neither rotation nor flip equivariant
        h, w = batch.shape[1:]
        ramp = np.arange(h, dtype=np.float32)[:, None] / h - np.arange(w, dtype=np.float32)[None, :] / (2 * w)
        return np.roll(batch, 1, axis=2) * 2 + ramp

    shapes = []
    got = predict_tiled(lambda b: (shapes.append(b.shape), skewed(b))[1], x, tile=128, overlap=0, tta=True)
    padded = np.pad(x, ((0, 8), (0, 4)))
    total = np.zeros_like(padded, dtype=np.float64)
    for flip in (False, True):
        for k in range(4):
            t = np.rot90(padded[:, ::-1] if flip else padded, k)
            p = np.rot90(_sigmoid(skewed(t[None].copy()))[0], -k)
            total += p[:, ::-1] if flip else p
    np.testing.assert_allclose(got, (total / 8)[:40, :60], rtol=0, atol=1e-6)
    assert sorted(set(shapes)) == [(4, 48, 64), (4, 64, 48)]
    assert not np.allclose(got, untiled(skewed, x), atol=1e-3)


def test_unet_tiled_matches_untiled_away_from_seams():
    import jax
    import jax.numpy as jnp

    from molml_jax.models.unet import UNet

    model = UNet(num_kernel=2)
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 16, 16)))  # eager init: 20 s
    apply = jax.jit(lambda x: model.apply(variables, x, train=False))

    def predict_logits(batch):
        return np.asarray(apply(batch))

    x = np.random.default_rng(6).random((512, 512)).astype(np.float32)
    full = untiled(predict_logits, x)
    tiled = predict_tiled(predict_logits, x, tile=256, overlap=64, batch_size=4)
    starts = tile_starts(512, 256, 64)
    inner_edges = sorted({s for s in starts if s > 0} | {s + 256 for s in starts if s + 256 < 512})
    distance = np.min(np.abs(np.arange(512)[:, None] - np.array(inner_edges)[None, :]), axis=1)
    far = distance > UNET_REACH
    interior = far[:, None] & far[None, :]
    assert interior.sum() > 0
    np.testing.assert_allclose(tiled[interior], full[interior], rtol=0, atol=1e-5)
    seam_error = float(np.abs(tiled - full)[~interior].max())
    print(f"max |tiled - untiled| near seams: {seam_error:.2e}")
    assert seam_error < 1e-3  # measured 5.7e-5 (tiles.py docstring)
