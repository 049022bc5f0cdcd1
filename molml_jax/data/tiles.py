"""Tiled prediction of one large image: overlapping tiles, blended, streamed in row bands.

Pure numpy; the network is any callable `predict_logits` (B, h, w) float32 -> (B, h, w)
logits, so this module knows no model.

The rule
--------
* The image (H, W) is zero-padded (in normalised units) at the bottom and right to
  multiples of `multiple` (16 for the U-Net: four 2x2 max-pools), as an untiled prediction
  pads it. Per axis the tile side is min(tile, padded size): an image no larger than a
  tile is one piece, identical to the untiled prediction.
* Tiles start on multiples of `multiple` (`tile_starts`): step = (tile - overlap) rounded
  down to a multiple, the last tile flush with the padded border. Aligned starts put every
  tile on the same pooling grid as the whole image, so a tile's prediction equals the
  whole-image prediction at pixels farther than the network's receptive-field half-width
  from the tile's edges inside the image (for the U-Net of `molml_jax.models.unet` with
  k = 3 that half-width is at most 166 pixels: the sum over its layers of the reach of each
  3x3 convolution, pooling and transposed convolution at its resolution). Unaligned tiles
  would shift the pooling grid and change the prediction everywhere.
* Overlapping tiles are blended in probability space: sigmoid(logits) weighted by
  `blend_window` (1 in the middle, a raised-cosine ramp over `overlap` pixels at each edge
  that lies inside the image, none at the image's own borders, floored at 1e-3), divided by
  the summed weights (float64 accumulators). A pixel covered by one tile gets that tile's
  value exactly, and a model that acts pixel by pixel gives the untiled result exactly
  whatever the tiling. Near tile edges the tiles disagree (they see zero padding where the
  whole image has pixels) and the blend smooths the seam: with tile 256, overlap 64, a
  randomly initialised UNet(num_kernel=2) on a 512 x 512 uniform random image differs from
  the untiled prediction by at most 5.7e-5 in probability near the seams (measured;
  tests/test_tiles.py asserts < 1e-3) and by < 1e-5 farther than 166 pixels from every
  tile edge inside the image. A trained network can depend more on distant pixels: the
  shipped unet-nuclei (tile 512, overlap 64, a 1,024 x 1,024 mosaic of course images)
  differs by 7.8e-5 on average and at most 0.75 at one seam pixel, and its mask at 0.0064%
  of the pixels; larger overlaps make the seams smaller (overlap 128: 0.0027%, at most
  0.33), at the cost of more tiles.
* Memory: one ROW of tiles at a time. The accumulators hold only the rows that a later tile
  row may still touch (at most `tile` rows x padded W, float64 sums and weights), and rows
  are yielded (`iter_tiled_rows`) as soon as no later tile row reaches them, so the peak
  memory is the raw image plus O(tile x W), whatever H: a 8192 x 8192 image predicted in one
  piece needs ~80 bytes per pixel (5 GiB); streamed with tile 512, about 200 MiB above the
  model's own (measured with UNet(num_kernel=8) on CPU, 2048 or 8192 rows of 8192 pixels
  alike), plus the caller's float32 output in `predict_tiled` (256 MiB). Each tile is normalised on the fly (raw.astype(float32) * scale + offset), so
  the caller never holds a float copy of the image (raw may be a memory map).
* Test-time augmentation (tta=True): each tile is predicted under the 8 symmetries of the
  square (rot90 k = 0..3 of the tile and of its left-right flip), transformed back, and the
  probabilities averaged. A non-square tile then has two shapes (h, w) and (w, h).
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

from molml_jax.errors import InputError

WEIGHT_FLOOR = 1e-3  # the smallest blending weight: no pixel's weight sum is ever zero

PredictLogits = Callable[[np.ndarray], np.ndarray]


def check_tiling(tile: int, overlap: int, *, multiple: int = 16) -> None:
    """InputError (one line, in the command line's words) unless tiles of side `tile` that
    overlap by `overlap` pixels can tile an image for a network that needs sides that are
    multiples of `multiple`. Any overlap from 0 to tile - multiple is allowed (starts are
    rounded to multiples of `multiple`, see `tile_starts`)."""
    if tile < multiple:
        raise InputError(f"--tile {tile} is smaller than the network's minimum of {multiple} pixels")
    if tile % multiple:
        raise InputError(f"--tile {tile} must be a multiple of {multiple} (the network's pooling)")
    if overlap < 0:
        raise InputError(f"--overlap {overlap} must not be negative")
    if overlap >= tile:
        raise InputError(f"--overlap {overlap} must be smaller than --tile {tile}")
    if overlap > tile - multiple:
        raise InputError(
            f"--overlap {overlap} must be at most --tile {tile} minus {multiple} "
            f"(tiles start on multiples of {multiple})")


def tile_starts(size: int, tile: int, overlap: int, multiple: int = 16) -> list[int]:
    """Starts of tiles of side `tile` covering [0, size), size a multiple of `multiple`.

    One tile (start 0) when size <= tile. Otherwise starts 0, s, 2s, ... with the step
    s = (tile - overlap) rounded down to a multiple of `multiple` (so consecutive tiles
    overlap by at least `overlap`, and every start is on the pooling grid), and a last
    tile flush with the end (start size - tile). Increasing, no duplicates.
    """
    if size % multiple or tile % multiple:
        raise ValueError(f"tile_starts: size {size} and tile {tile} must be multiples of {multiple}")
    if size <= tile:
        return [0]
    step = (tile - overlap) // multiple * multiple
    if step <= 0:
        raise ValueError(f"tile_starts: overlap {overlap} leaves no step on a {multiple}-pixel grid for tile {tile}")
    starts = [0]
    while starts[-1] + step + tile < size:
        starts.append(starts[-1] + step)
    starts.append(size - tile)
    return starts


def _ramp(n: int, overlap: int, low: bool, high: bool) -> np.ndarray:
    w = np.ones(n, np.float64)
    m = min(overlap, n)
    if m > 0:
        rise = 0.5 - 0.5 * np.cos(np.pi * (np.arange(m) + 0.5) / m)  # raised cosine, 0 < rise < 1
        if low:
            w[:m] = np.minimum(w[:m], rise)
        if high:
            w[n - m:] = np.minimum(w[n - m:], rise[::-1])
    return w


def blend_window(height: int, width: int, overlap: int, *, edges=(True, True, True, True)) -> np.ndarray:
    """Blending weights of one tile: float32 (height, width), the outer product of two 1-D
    windows that are 1 in the middle and rise as a raised cosine over `overlap` pixels at
    each edge, floored at WEIGHT_FLOOR. edges = (top, bottom, left, right): which edges get
    a ramp (`iter_tiled_rows` leaves none at the image's own borders, where no other tile
    competes)."""
    top, bottom, left, right = edges
    w = np.outer(_ramp(height, overlap, top, bottom), _ramp(width, overlap, left, right))
    return np.maximum(w, WEIGHT_FLOOR).astype(np.float32)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, np.float32)
    return np.exp(-np.logaddexp(np.float32(0.0), -z)).astype(np.float32)


_DIHEDRAL = [(flip, k) for flip in (False, True) for k in range(4)]


def _forward(x: np.ndarray, flip: bool, k: int) -> np.ndarray:
    return np.rot90(x[:, ::-1] if flip else x, k)


def _backward(y: np.ndarray, flip: bool, k: int) -> np.ndarray:
    y = np.rot90(y, -k)
    return y[:, ::-1] if flip else y


def iter_tiled_rows(
    predict_logits: PredictLogits,
    raw: np.ndarray,
    *,
    scale: float = 1.0,
    offset: float = 0.0,
    tile: int = 512,
    overlap: int = 64,
    batch_size: int = 4,
    tta: bool = False,
    multiple: int = 16,
) -> Iterator[tuple[int, np.ndarray]]:
    """Foreground probabilities of one (H, W) image, streamed top to bottom in row bands.

    Args:
      predict_logits: (B, h, w) float32 -> (B, h, w) logits; called with at most
        batch_size tiles of one shape (a short batch is filled by repeating a tile, so the
        shape is the same in every call: one compilation; two with tta on non-square tiles).
      raw: (H, W) numbers of any dtype (uint8, uint16, float32; a memory map is fine); each
        tile is normalised as raw.astype(float32) * scale + offset.
      tile, overlap, multiple: see `check_tiling`, `tile_starts` and the module docstring.
      tta: average the 8 dihedral transforms of each tile (probability space).

    Yields:
      (row_start, probabilities float32 (rows, W)); consecutive bands, every row 0..H-1
      exactly once, each band at most `tile` rows.
    """
    raw = np.asarray(raw) if not isinstance(raw, np.ndarray) else raw
    if raw.ndim != 2:
        raise ValueError(f"iter_tiled_rows: expected one grey image (H, W), got shape {raw.shape}")
    if not (np.issubdtype(raw.dtype, np.number) or raw.dtype == np.bool_):
        raise ValueError(f"iter_tiled_rows: expected numbers, got dtype {raw.dtype}")
    if batch_size < 1:
        raise ValueError(f"iter_tiled_rows: batch_size must be >= 1, got {batch_size}")
    check_tiling(tile, overlap, multiple=multiple)
    h, w = raw.shape
    if h == 0 or w == 0:
        raise ValueError(f"iter_tiled_rows: empty image of shape {raw.shape}")
    hp, wp = h + -h % multiple, w + -w % multiple
    th, tw = min(tile, hp), min(tile, wp)
    rows = tile_starts(hp, th, overlap, multiple)
    cols = tile_starts(wp, tw, overlap, multiple)
    views = _DIHEDRAL if tta else [(False, 0)]
    per_row = len(cols) * len(views)
    size = min(batch_size, per_row)  # the same number of items in every tile row: one batch shape
    windows = {}  # blending windows by which edges are inside the image

    def window(r: int, c: int) -> np.ndarray:
        key = (r > 0, r + th < hp, c > 0, c + tw < wp)
        if key not in windows:
            windows[key] = blend_window(th, tw, overlap, edges=key).astype(np.float64)
        return windows[key]

    def read_tile(r: int, c: int) -> np.ndarray:
        x = np.zeros((th, tw), np.float32)
        part = raw[r:min(r + th, h), c:min(c + tw, w)].astype(np.float32)
        x[:part.shape[0], :part.shape[1]] = part * np.float32(scale) + np.float32(offset)
        return x

    base = 0  # the image row of the accumulators' first row
    num = np.zeros((th, wp), np.float64)  # sum of weight * probability, rows base .. base + th
    den = np.zeros((th, wp), np.float64)  # sum of weights
    for i, r in enumerate(rows):
        for c in cols:
            den[r - base:r - base + th, c:c + tw] += window(r, c)
        items = [(c, view) for c in cols for view in views]
        tiles = {}
        # group by shape (tta on a non-square tile has two), then batches of `size`
        for shape_group in _group_by_shape(items, th, tw):
            for start in range(0, len(shape_group), size):
                chunk = shape_group[start:start + size]
                batch = []
                for c, (flip, k) in chunk:
                    if c not in tiles:
                        tiles[c] = read_tile(r, c)
                    batch.append(_forward(tiles[c], flip, k))
                real = len(batch)
                batch += [batch[-1]] * (size - real)
                logits = np.asarray(predict_logits(np.ascontiguousarray(np.stack(batch))))
                if logits.shape != (size,) + batch[0].shape:
                    raise ValueError(f"iter_tiled_rows: predict_logits returned shape {logits.shape} "
                                     f"for a batch of shape {(size,) + batch[0].shape}")
                probs = _sigmoid(logits[:real])
                for (c, (flip, k)), p in zip(chunk, probs):
                    p = _backward(p, flip, k).astype(np.float64)
                    num[r - base:r - base + th, c:c + tw] += window(r, c) * p / len(views)
        final = rows[i + 1] if i + 1 < len(rows) else hp  # no later tile row touches rows < final
        stop = min(final, h)
        if stop > base:
            band = num[:stop - base, :w] / den[:stop - base, :w]
            yield base, band.astype(np.float32)
        if final >= h:
            return
        done = final - base  # shift the rows still open to the top, clear the rest
        num[:th - done] = num[done:].copy()
        den[:th - done] = den[done:].copy()
        num[th - done:] = 0.0
        den[th - done:] = 0.0
        base = final


def _group_by_shape(items, th: int, tw: int) -> list[list]:
    same = [it for it in items if it[1][1] % 2 == 0 or th == tw]
    swapped = [it for it in items if not (it[1][1] % 2 == 0 or th == tw)]
    return [g for g in (same, swapped) if g]


def predict_tiled(predict_logits: PredictLogits, raw: np.ndarray, **kwargs) -> np.ndarray:
    """Foreground probabilities float32 (H, W) of one (H, W) image: the bands of
    `iter_tiled_rows` (same arguments) written into one preallocated array."""
    raw_shape = np.shape(raw)
    if len(raw_shape) != 2:
        raise ValueError(f"predict_tiled: expected one grey image (H, W), got shape {raw_shape}")
    out = np.empty(raw_shape, np.float32)
    for start, band in iter_tiled_rows(predict_logits, raw, **kwargs):
        out[start:start + band.shape[0]] = band
    return out
