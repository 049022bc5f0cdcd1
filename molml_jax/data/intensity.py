"""Raw pixels -> float32 model inputs: the intensity normalisation rules (pure numpy).

A raw image is a 2-D array of dtype uint8, uint16 or float32 (what `images.ImageFile.read_raw`
returns). A rule maps it to float32 of the same shape by `raw * scale + offset`:

* "scale" (the default; the course's /255): uint8 -> raw / 255, uint16 -> raw / 65535,
  float -> raw as it is, allowed only when every value lies within [0, 1]. A model trained
  this way has learnt one bit depth: `trained_kind` refuses an image of another kind rather
  than silently dividing an 8-bit-trained model's input by 65535.
* "percentile" (Cellpose's normalize99): (raw - lo) / (hi - lo) with lo, hi the 1st and 99th
  percentiles of the image's own pixels (numpy's default linear interpolation, equal to
  `np.percentile(raw, [1, 99])`), not clipped; a constant image (hi == lo) becomes all zeros.
  Independent of bit depth and gain: the same picture stored x16 in uint16 gives the same
  normalised image.
"""

from __future__ import annotations

import numpy as np

from molml_jax.errors import InputError

NORMALIZATIONS = ("scale", "percentile")
PERCENTILES = (1.0, 99.0)
PIXEL_KINDS = ("uint8", "uint16", "float")

_BITS = {"uint8": "8-bit", "uint16": "16-bit", "float": "floating-point"}
_SCALED = {"uint8": "divided by 255", "uint16": "divided by 65535", "float": "taken as they are (0..1)"}
_MAX = {"uint8": 255.0, "uint16": 65535.0}
_CHUNK = 1 << 22  # pixels per np.bincount call (it makes an intp copy of what it counts)


def pixel_kind(raw: np.ndarray) -> str:
    """"uint8", "uint16" or "float" (any floating dtype): the pixel type of a raw image."""
    dtype = np.asarray(raw).dtype
    if dtype == np.uint8:
        return "uint8"
    if dtype == np.uint16:
        return "uint16"
    if np.issubdtype(dtype, np.floating):
        return "float"
    raise ValueError(f"pixel_kind: expected uint8, uint16 or float pixels, got {dtype}")


def describe_kind(kind: str) -> str:
    """How messages name a pixel kind: '8-bit', '16-bit', 'floating-point'."""
    return _BITS.get(kind, kind)


def _check_rule(rule: str) -> None:
    if rule not in NORMALIZATIONS:
        raise InputError(f"normalize: unknown rule {rule!r}; expected one of {', '.join(NORMALIZATIONS)}")


def histogram(raw: np.ndarray) -> np.ndarray:
    """int64 pixel counts of a uint8 (256 bins) or uint16 (65536 bins) image, in chunks
    (np.bincount copies what it counts to intp)."""
    arr = np.asarray(raw)
    if arr.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"histogram: expected uint8 or uint16 pixels, got {arr.dtype}")
    flat = np.ascontiguousarray(arr).reshape(-1)
    counts = np.zeros(256 if arr.dtype == np.uint8 else 65536, np.int64)
    for start in range(0, flat.size, _CHUNK):
        counts += np.bincount(flat[start:start + _CHUNK], minlength=counts.size)
    return counts


def percentiles(raw: np.ndarray, q: tuple[float, float] = PERCENTILES) -> tuple[float, float]:
    """`np.percentile(raw, q)` (linear interpolation), exactly; for uint8/uint16 from a
    histogram (O(pixels), no sorted or float copy of the image)."""
    arr = np.asarray(raw)
    if arr.size == 0:
        raise ValueError("percentiles: empty image")
    if pixel_kind(arr) == "float":
        lo, hi = np.percentile(arr, list(q))
        return float(lo), float(hi)
    n = arr.size
    cumulative = np.cumsum(histogram(arr))

    def nth(k: int) -> int:  # the k-th smallest pixel (0-based)
        return int(np.searchsorted(cumulative, k, side="right"))

    out = []
    for virtual in (n - 1) * (np.asarray(q, np.float64) / 100):  # numpy's 'linear' method
        if virtual >= n - 1:
            out.append(float(nth(n - 1)))
            continue
        below = int(np.floor(virtual))
        gamma = virtual - below
        a, b = nth(below), nth(below + 1)
        diff = float(b - a)
        out.append(float(a + diff * gamma if gamma < 0.5 else b - diff * (1 - gamma)))  # numpy's _lerp
    return out[0], out[1]


def _check_scale(raw: np.ndarray, kind: str, trained_kind: str | None, where: str) -> None:
    if trained_kind is not None and trained_kind != kind:
        if trained_kind not in PIXEL_KINDS:
            raise ValueError(f"trained_kind: expected one of {', '.join(PIXEL_KINDS)}, got {trained_kind!r}")
        raise InputError(
            f"{where}: {_BITS[kind]} pixels, but this model was trained on {_BITS[trained_kind]} images "
            f"{_SCALED[trained_kind]}; convert the image to {_BITS[trained_kind]}, or use a model trained "
            "with --normalize percentile (independent of bit depth and gain)"
        )
    if kind == "float" and raw.size:
        lo, hi = float(raw.min()), float(raw.max())
        if lo < 0.0 or hi > 1.0:
            raise InputError(
                f"{where}: floating-point pixels from {lo:.6g} to {hi:.6g}, outside 0..1, which --normalize "
                "scale takes as they are; use --normalize percentile"
            )


def normalization(
    raw: np.ndarray, rule: str, *, trained_kind: str | None = None, where: str = "image"
) -> tuple[float, float]:
    """(scale, offset) of `rule` for this raw (H, W) image: normalised = raw * scale + offset.

    `trained_kind` (the pixel kind a "scale" model was trained on) makes an image of another
    kind an `InputError`; "percentile" ignores it. `where` names the image in messages.
    """
    _check_rule(rule)
    arr = np.asarray(raw)
    kind = pixel_kind(arr)
    if rule == "scale":
        _check_scale(arr, kind, trained_kind, where)
        return (1.0 / _MAX[kind], 0.0) if kind in _MAX else (1.0, 0.0)
    lo, hi = percentiles(arr)
    if hi == lo:
        return 0.0, 0.0
    return 1.0 / (hi - lo), -lo / (hi - lo)


def normalize(
    raw: np.ndarray, rule: str, *, trained_kind: str | None = None, where: str = "image"
) -> np.ndarray:
    """float32 array of raw's shape: `rule` applied (see `normalization` and the module docstring).

    "scale" divides in float32 (raw.astype(float32) / 255, bit-identical to the course's
    reader; raw * float32(1/255) may differ in the last bit); "percentile" computes
    raw.astype(float32) * float32(scale) + float32(offset), as tiled prediction does.
    """
    _check_rule(rule)
    arr = np.asarray(raw)
    kind = pixel_kind(arr)
    if rule == "scale":
        _check_scale(arr, kind, trained_kind, where)
        out = arr.astype(np.float32)
        return out / np.float32(_MAX[kind]) if kind in _MAX else out
    scale, offset = normalization(arr, rule)
    out = arr.astype(np.float32)
    out *= np.float32(scale)
    out += np.float32(offset)
    return out
