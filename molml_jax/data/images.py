"""Image/mask pairs -> float arrays: readers for folders and tarballs, PNG masks, padding.

Pure numpy + Pillow (no JAX). Every problem with an input is an `InputError` whose one-line
message names the folder, tarball or file and the problem.

Pairing rule (`read_image_pairs`)
---------------------------------
A file is an *image* when its name (without the extension) ends with a separator followed by
`image_tag`, and a *mask* when it ends with a separator followed by `mask_tag`:

    PREFIX{sep}{image_tag}.EXT   pairs with   PREFIX{sep}{mask_tag}.EXT'

* sep is one of '_', '-', '.'; the tag comparison and EXT are case-insensitive;
* EXT (and EXT', which may differ) is one of jpg, jpeg, png, tif, tiff, bmp;
* the two files must be in the same folder (or tarball folder); the pair's name is its
  PREFIX with the folder path, less the folders that all pairs share
  (the course tarball gives '0', '1', ..., '333');
* OS metadata is ignored: `__MACOSX/`, hidden files and folders (`.*`, which includes
  `._*` AppleDouble files and `.DS_Store`), `Thumbs.db`, `desktop.ini`;
  files that carry neither tag are ignored.

Pairs are sorted by name in natural order ('2' before '10'), so results are deterministic.
A tarball (.tar.gz, .tgz, .tar, also .tar.bz2 / .tar.xz) is read directly with `tarfile`;
nothing is extracted to disk.

Pixel values
------------
Images are converted to grey as PIL's `convert('L')` does (ITU-R 601-2 luma
L = R*299/1000 + G*587/1000 + B*114/1000 for RGB, RGBA (alpha ignored), palette images;
the L channel of LA), then divided by 255 as float32 (the course reference). 16-bit grey
images (PIL modes 'I;16*', and 'I' with values in 0..65535) are divided by 65535 instead.
Masks are read the same way (so a 0/255 mask becomes 0/1; the course's JPEG masks have
compression noise in between); `binarize_masks=True` thresholds them at 0.5 to {0, 1}.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import io
import os
import re
import tarfile
import warnings
import zlib
from pathlib import Path, PurePosixPath
from typing import Sequence

import numpy as np
from PIL import Image

from molml_jax.errors import InputError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
TAG_SEPARATORS = "_-."
_IGNORED_NAMES = {"thumbs.db", "desktop.ini", "__macosx"}
_SHOW = 5  # how many names a message lists


def default_cells_tarball() -> Path:
    """The course's nucleus images: 334 grey 256x256 `N_cells.jpg` + `N_masks.jpg` pairs."""
    return Path(
        str(importlib.resources.files("molml_jax.data") / "bundled" / "cell_segmentation_jpeg.tar.gz")
    )


@dataclasses.dataclass(frozen=True)
class ImagePairs:
    """Images and masks read from one folder or tarball, sorted by name.

    names: the pair names (PREFIX, see the module docstring), one per pair.
    images, masks: float32 (N, H, W).
    source: the folder or tarball, as given.
    skipped: names of images that had no mask (not in `names`).
    """

    source: str
    names: list[str]
    images: np.ndarray
    masks: np.ndarray
    skipped: list[str] = dataclasses.field(default_factory=list)

    def __len__(self) -> int:
        return len(self.names)


# ---------------------------------------------------------------- listing files


@dataclasses.dataclass
class _File:
    rel: PurePosixPath  # path inside the folder / tarball
    where: str  # how messages name it
    path: Path | None = None  # on disk (folder sources)
    data: bytes | None = None  # contents (tarball sources)

    def read(self) -> bytes:
        if self.data is not None:
            return self.data
        try:
            return self.path.read_bytes()  # type: ignore[union-attr]
        except OSError as err:
            raise InputError(f"{self.where}: cannot read ({err.strerror or err})") from None


def _ignored(rel: PurePosixPath) -> bool:
    return any(part.startswith(".") or part.lower() in _IGNORED_NAMES for part in rel.parts)


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _is_tarball(path: Path) -> bool:
    return path.name.lower().endswith(TAR_SUFFIXES)


def _list_files(source: Path, want) -> list[_File]:
    """Image files under a folder (recursively) or in a tarball whose name passes `want`."""
    if not source.exists():
        raise InputError(f"{source}: no such file or folder")
    files: list[_File] = []
    if source.is_dir():
        for root, dirs, names in os.walk(source):
            dirs[:] = sorted(d for d in dirs if not (d.startswith(".") or d.lower() in _IGNORED_NAMES))
            for name in sorted(names):
                path = Path(root) / name
                rel = PurePosixPath(path.relative_to(source).as_posix())
                if _ignored(rel) or not _is_image_name(name) or not want(rel):
                    continue
                files.append(_File(rel=rel, where=str(path), path=path))
        return files
    if not _is_tarball(source):
        raise InputError(
            f"{source}: not a folder or a tarball (.tar.gz, .tgz, .tar); "
            "give a folder of images or an archive of one"
        )
    try:
        with tarfile.open(source, "r:*") as tar:
            for member in tar:
                name = member.name
                while name.startswith("./"):
                    name = name[2:]
                rel = PurePosixPath(name)
                if not member.isfile() or _ignored(rel) or not _is_image_name(rel.name) or not want(rel):
                    continue
                handle = tar.extractfile(member)
                data = handle.read() if handle is not None else b""
                files.append(_File(rel=rel, where=f"{source}: {member.name}", data=data))
    except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
        detail = " ".join((str(err) or type(err).__name__).split())  # tarfile's text spans lines
        raise InputError(f"{source}: not a readable tarball ({detail})") from None
    return files


def _split_tag(rel: PurePosixPath, tag: str) -> str | None:
    """PREFIX if rel's stem ends with a separator and `tag` (case-insensitive), else None."""
    stem = rel.name.rsplit(".", 1)[0]
    n = len(tag)
    if len(stem) > n + 1 and stem[-n:].lower() == tag.lower() and stem[-n - 1] in TAG_SEPARATORS:
        return stem[: -n - 1]
    return None


def _natural_key(name: str) -> list:
    return [(0, int(tok), "") if tok.isdigit() else (1, 0, tok) for tok in re.split(r"(\d+)", name) if tok]


def _strip_common_dirs(keys: Sequence[PurePosixPath]) -> list[str]:
    """Names relative to the deepest folder that all `keys` share."""
    if not keys:
        return []
    common = list(keys[0].parent.parts)
    for k in keys[1:]:
        parts = k.parent.parts
        i = 0
        while i < min(len(common), len(parts)) and common[i] == parts[i]:
            i += 1
        common = common[:i]
    return [PurePosixPath(*k.parts[len(common):]).as_posix() for k in keys]


def _show(names: Sequence[str]) -> str:
    head = ", ".join(names[:_SHOW])
    return head + (f", ... ({len(names)} in all)" if len(names) > _SHOW else "")


# ---------------------------------------------------------------- decoding


def _decode(file: _File) -> np.ndarray:
    """Grey float32 (H, W) in [0, 1] (see the module docstring)."""
    data = file.read()
    if not data:
        raise InputError(f"{file.where}: empty file, not an image")
    try:
        with Image.open(io.BytesIO(data)) as im:
            frames = getattr(im, "n_frames", 1)
            if frames > 1:
                raise InputError(f"{file.where}: has {frames} frames; expected one 2-D image")
            im.load()
            mode = im.mode
            if mode.startswith("I;16"):
                arr = np.asarray(im).astype(np.float32) / 65535.0
            elif mode == "I":
                raw = np.asarray(im)
                if raw.size and (raw.min() < 0 or raw.max() > 65535):
                    raise InputError(
                        f"{file.where}: 32-bit integer pixels outside 0..65535; save as 8- or 16-bit"
                    )
                arr = raw.astype(np.float32) / 65535.0
            elif mode == "F":
                raise InputError(f"{file.where}: floating-point pixels (mode F); save as 8- or 16-bit")
            else:
                grey = im if mode == "L" else im.convert("L")
                arr = np.asarray(grey, dtype=np.uint8).astype(np.float32) / 255.0
    except InputError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError(f"{file.where}: not a readable image ({detail})") from None
    if arr.ndim != 2:
        raise InputError(f"{file.where}: expected a 2-D image, got shape {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def _resize(arr: np.ndarray, size: tuple[int, int], nearest: bool) -> np.ndarray:
    h, w = size
    if arr.shape == (h, w):
        return arr
    im = Image.fromarray(np.ascontiguousarray(arr, dtype=np.float32), mode="F")
    out = im.resize((w, h), Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR)
    return np.asarray(out, dtype=np.float32)


def _check_size(resize) -> tuple[int, int] | None:
    if resize is None:
        return None
    try:
        h, w = (int(v) for v in resize)
    except (TypeError, ValueError):
        raise InputError(f"resize: expected two integers H W, got {resize!r}") from None
    if h < 1 or w < 1:
        raise InputError(f"resize: H and W must be positive, got {h} {w}")
    return h, w


# ---------------------------------------------------------------- public readers


def read_image_pairs(
    source: str | os.PathLike,
    *,
    image_tag: str = "cells",
    mask_tag: str = "masks",
    resize: Sequence[int] | None = None,
    binarize_masks: bool = False,
) -> ImagePairs:
    """Read `PREFIX_{image_tag}.EXT` / `PREFIX_{mask_tag}.EXT` pairs from a folder or tarball.

    See the module docstring for the pairing rule and the pixel values. `resize=(H, W)`
    resizes images bilinearly and masks bilinearly (nearest when `binarize_masks`, after
    thresholding, so they stay {0, 1}). Without it all pairs must have one size.

    Images without a mask are skipped, listed in `skipped` and reported with
    `warnings.warn`; masks whose values are all below 0.5 (saved as 0/1 labels?) are
    reported with a warning too. Raises `InputError` (one line, naming the file) for: a missing path, a
    corrupt tarball, a mask without its image, two files for one name, no pairs, an
    unreadable image, an image and mask of different sizes, mixed sizes without `resize`.
    """
    src = Path(source)
    size = _check_size(resize)
    if not image_tag or not mask_tag or image_tag.lower() == mask_tag.lower():
        raise InputError(
            f"image_tag {image_tag!r} and mask_tag {mask_tag!r} must be different and non-empty"
        )

    def want(rel: PurePosixPath) -> bool:
        return _split_tag(rel, image_tag) is not None or _split_tag(rel, mask_tag) is not None

    images: dict[PurePosixPath, _File] = {}
    masks: dict[PurePosixPath, _File] = {}
    for f in _list_files(src, want):
        # the longer tag first, so that 'x_mask_img' is a mask when the tags are 'img', 'mask_img'
        for tag, table in sorted(((image_tag, images), (mask_tag, masks)), key=lambda p: -len(p[0])):
            prefix = _split_tag(f.rel, tag)
            if prefix is None:
                continue
            key = f.rel.parent / prefix
            if key in table:
                raise InputError(
                    f"{src}: two {tag} files for '{key.as_posix()}': {table[key].rel.as_posix()} and "
                    f"{f.rel.as_posix()}"
                )
            table[key] = f
            break

    orphans = sorted((k for k in masks if k not in images), key=lambda k: _natural_key(k.as_posix()))
    if orphans:
        f = masks[orphans[0]]
        more = f" (and {len(orphans) - 1} more)" if len(orphans) > 1 else ""
        prefix = orphans[0].name
        sep = f.rel.name[len(prefix)]
        raise InputError(f"{f.where}: mask without its image (no {prefix}{sep}{image_tag}.EXT){more}")
    keys = [k for k in images if k in masks]
    lonely = [k for k in images if k not in masks]
    if not keys:
        found = f"{len(images)} {image_tag} file(s) without masks" if images else "no matching files"
        raise InputError(
            f"{src}: no image/mask pairs (expected PREFIX_{image_tag}.EXT with PREFIX_{mask_tag}.EXT, "
            f"EXT one of {', '.join(e[1:] for e in IMAGE_EXTENSIONS)}; found {found})"
        )

    all_names = _strip_common_dirs(keys + lonely)
    names_of = dict(zip(keys + lonely, all_names))
    keys.sort(key=lambda k: _natural_key(names_of[k]))
    skipped = sorted((names_of[k] for k in lonely), key=_natural_key)
    if skipped:
        warnings.warn(
            f"{src}: skipped {len(skipped)} {image_tag} image(s) without a {mask_tag} file: "
            f"{_show(skipped)}",
            stacklevel=2,
        )

    xs, ys = [], []
    first: tuple[str, tuple[int, int]] | None = None
    for k in keys:
        x = _decode(images[k])
        y = _decode(masks[k])
        if x.shape != y.shape:
            raise InputError(
                f"{images[k].where}: image is {x.shape[0]}x{x.shape[1]} (HxW) but its mask "
                f"{masks[k].rel.name} is {y.shape[0]}x{y.shape[1]}"
            )
        if binarize_masks:
            y = (y > 0.5).astype(np.float32)
        if size is not None:
            x = _resize(x, size, nearest=False)
            y = _resize(y, size, nearest=binarize_masks)
        elif first is None:
            first = (images[k].rel.as_posix(), x.shape)
        elif x.shape != first[1]:
            (h0, w0), (h1, w1) = first[1], x.shape
            raise InputError(
                f"{src}: images differ in size ({first[0]} is {h0}x{w0}, {images[k].rel.as_posix()} is "
                f"{h1}x{w1}, HxW); pass --resize H W (resize=(H, W)) to resize them all"
            )
        xs.append(x)
        ys.append(y)
    masks_arr = np.stack(ys).astype(np.float32, copy=False)
    if not binarize_masks and 0.0 < float(masks_arr.max()) < 0.5:
        warnings.warn(
            f"{src}: every {mask_tag} value is below 0.5 (largest {masks_arr.max() * 255:.0f}/255): "
            "were the masks saved as labels 0/1 or 0..N instead of 0/255? Values are divided by 255",
            stacklevel=2,
        )
    return ImagePairs(
        source=str(source),
        names=[names_of[k] for k in keys],
        images=np.stack(xs).astype(np.float32, copy=False),
        masks=masks_arr,
        skipped=skipped,
    )


def read_images_for_prediction(
    path: str | os.PathLike, *, exclude_tag: str | None = None
) -> tuple[list[str], list[np.ndarray]]:
    """Images to segment: one image file, or every image in a folder (recursive) or tarball.

    Images may have any size; each is grey-converted and scaled as in `read_image_pairs`
    (float32 (H, W) in [0, 1]). OS metadata is ignored, and so are files whose stem ends in
    `exclude_tag` (e.g. 'masks', to point this at a training folder). Names are the paths
    without extension, less the shared folders (a single file: its stem), natural-sorted.
    """
    src = Path(path)
    if src.is_file() and not _is_tarball(src):
        if not _is_image_name(src.name):
            raise InputError(
                f"{src}: not an image file (expected {', '.join(e[1:] for e in IMAGE_EXTENSIONS)})"
            )
        f = _File(rel=PurePosixPath(src.name), where=str(src), path=src)
        return [src.name.rsplit(".", 1)[0]], [_decode(f)]

    def want(rel: PurePosixPath) -> bool:
        return exclude_tag is None or _split_tag(rel, exclude_tag) is None

    files = _list_files(src, want)
    if not files:
        raise InputError(
            f"{src}: no images (expected files ending in {', '.join(e[1:] for e in IMAGE_EXTENSIONS)})"
        )
    keys = [f.rel.parent / f.rel.name.rsplit(".", 1)[0] for f in files]
    names = _strip_common_dirs(keys)
    seen: dict[str, _File] = {}
    for n, f in zip(names, files):
        if n in seen:
            raise InputError(
                f"{src}: two images named '{n}': {seen[n].rel.as_posix()} and {f.rel.as_posix()}"
            )
        seen[n] = f
    order = sorted(range(len(files)), key=lambda i: _natural_key(names[i]))
    return [names[i] for i in order], [_decode(files[i]) for i in order]


# ---------------------------------------------------------------- writing and padding


def write_mask_png(path: str | os.PathLike, mask: np.ndarray) -> Path:
    """Write a (H, W) mask as an 8-bit PNG of 0 and 255.

    Bool masks are written as they are; numeric masks are thresholded at 0.5 (> 0.5 is
    foreground), so 0/1 masks and probabilities both work. Creates parent folders.
    """
    arr = np.asarray(mask)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise ValueError(f"write_mask_png: expected a (H, W) mask, got shape {arr.shape}")
    fg = arr if arr.dtype == np.bool_ else arr > 0.5
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.where(fg, 255, 0).astype(np.uint8), mode="L").save(out, format="PNG")
    return out


def pad_to_multiple(image: np.ndarray, multiple: int = 16) -> tuple[np.ndarray, tuple[int, int]]:
    """Zero-pad a (H, W) image at the bottom and right to multiples of `multiple`.

    The U-Net halves the size four times, so its input sides must be multiples of 16.
    Returns the padded image and the original (H, W) for `crop_to`.
    """
    arr = np.asarray(image)
    if arr.ndim != 2:
        raise ValueError(f"pad_to_multiple: expected a (H, W) image, got shape {arr.shape}")
    if multiple < 1:
        raise ValueError(f"pad_to_multiple: multiple must be positive, got {multiple}")
    h, w = arr.shape
    ph, pw = -h % multiple, -w % multiple
    padded = np.pad(arr, ((0, ph), (0, pw))) if ph or pw else arr
    return padded, (h, w)


def crop_to(padded: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Undo `pad_to_multiple`: the top-left (H, W) of the last two axes of `padded`."""
    h, w = size
    return padded[..., :h, :w]
