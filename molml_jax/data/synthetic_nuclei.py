"""Synthetic fluorescence-like nucleus images with exact masks: a second dataset to train on.

Each image is a dark background with a smooth illumination gradient and 3-12 bright
elliptical nuclei (random centre, axes, orientation and brightness, with a smooth texture
inside), blurred by the optics (Gaussian, sigma ~1.2 px at 128 px) and with camera noise;
the mask is the union of the ellipses before blurring. Nuclei may touch or overlap, as in
real crowded fields. The images are written as grey 8-bit PNGs named
`<stem>_<image_tag>.png` / `<stem>_<mask_tag>.png` (0/255 masks), the layout
`read_image_pairs` reads with --image-tag / --mask-tag.

    python -m experiments.segmentation simulate --out data/synthetic_nuclei --n 200 --size 128
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of a 2-D float array, edges reflected."""
    radius = max(1, int(3 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    padded = np.pad(image, radius, mode="reflect")
    rows = np.apply_along_axis(lambda r: np.convolve(r, taps, mode="valid"), 1, padded)
    return np.apply_along_axis(lambda c: np.convolve(c, taps, mode="valid"), 0, rows)


def synthetic_nucleus_image(rng: np.random.Generator, size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """One (image, mask) pair: uint8 (size, size) grey image and uint8 {0, 255} mask."""
    scale = size / 128.0
    yy, xx = np.mgrid[:size, :size].astype(np.float64)
    mask = np.zeros((size, size), bool)
    signal = np.zeros((size, size))
    texture = _gaussian_blur(rng.normal(0.0, 1.0, (size, size)), 2.0 * scale)
    texture /= texture.std() + 1e-12
    for _ in range(int(rng.integers(3, 13))):
        cy, cx = rng.uniform(0, size, 2)
        a, b = rng.uniform(5, 14, 2) * scale  # semi-axes in pixels
        angle = rng.uniform(0, np.pi)
        dy, dx = yy - cy, xx - cx
        u = dx * np.cos(angle) + dy * np.sin(angle)
        v = -dx * np.sin(angle) + dy * np.cos(angle)
        inside = (u / a) ** 2 + (v / b) ** 2 <= 1.0
        mask |= inside
        brightness = rng.uniform(110, 210)
        signal = np.where(inside, np.maximum(signal, brightness * (1 + 0.12 * texture)), signal)
    gradient = rng.uniform(-12, 12) * (xx / size - 0.5) + rng.uniform(-12, 12) * (yy / size - 0.5)
    background = rng.uniform(15, 45) + gradient
    image = _gaussian_blur(np.maximum(signal, 0) + background, 1.2 * scale)
    image = image + rng.normal(0.0, rng.uniform(4, 12), image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), mask.astype(np.uint8) * 255


def write_synthetic_nuclei(out: str | Path, n: int, size: int = 128, seed: int = 0, *,
                           image_tag: str = "img", mask_tag: str = "label") -> Path:
    """Write n pairs `nucleus_<i>_<image_tag>.png` + `nucleus_<i>_<mask_tag>.png` into `out`
    (created; existing pairs of the same names are overwritten). Returns the folder."""
    from PIL import Image

    if n < 1:
        raise ValueError(f"need at least one image, got n={n}")
    if size < 16:
        raise ValueError(f"size must be at least 16 pixels, got {size}")
    if image_tag == mask_tag or not image_tag or not mask_tag:
        raise ValueError(f"image and mask tags must be two different non-empty words, got {image_tag!r}, {mask_tag!r}")
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    width = len(str(n - 1))
    for i in range(n):
        image, mask = synthetic_nucleus_image(rng, size)
        stem = f"nucleus_{i:0{width}d}"
        Image.fromarray(image).save(folder / f"{stem}_{image_tag}.png")
        Image.fromarray(mask).save(folder / f"{stem}_{mask_tag}.png")
    return folder
