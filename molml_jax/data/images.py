"""Image/mask pairs -> float arrays: readers for folders, tarballs and pair tables, padding.

Pure numpy + Pillow + tifffile (no JAX). Every problem with an input is an `InputError` whose
one-line message names the folder, tarball, table or file and the problem.

Pairing rule (`read_image_pairs`)
---------------------------------
A file is an *image* when its name (without the extension) carries `image_tag`, and a *mask*
when it carries `mask_tag`, joined to the pair's NAME by a separator, at the end or at the start:

    NAME{sep}{image_tag}.EXT   pairs with   NAME{sep}{mask_tag}.EXT'     (tag at the end)
    {image_tag}{sep}NAME.EXT   pairs with   {mask_tag}{sep}NAME.EXT'     (tag at the start)

* the form is detected per dataset: if some files match only the end form and others only
  the start form, that is an `InputError` (name every pair one way, or list the pairs in a
  table: `read_pairs_table`, --pairs TABLE.csv); files matching both forms decide nothing;
* sep is one of '_', '-', '.'; the tag comparison and EXT are case-insensitive;
* EXT (and EXT', which may differ) is one of jpg, jpeg, png, tif, tiff, bmp;
* the two files must be in the same folder (or tarball folder); the pair's name is its
  NAME with the folder path, less the folders that all pairs share
  (the course tarball gives '0', '1', ..., '333');
* OS metadata is ignored: `__MACOSX/`, hidden files and folders (`.*`, which includes
  `._*` AppleDouble files and `.DS_Store`), `Thumbs.db`, `desktop.ini`;
  files that carry neither tag are ignored.

Pairs are sorted by name in natural order ('2' before '10'), so results are deterministic.
A tarball (.tar.gz, .tgz, .tar, also .tar.bz2 / .tar.xz) is read directly with `tarfile`;
nothing is extracted to disk.

Pixel values
------------
A file is first read RAW, as a 2-D array of its own pixel type (`ImageFile.read_raw`):
uint8, uint16 or float32.

* .tif/.tiff are read with `tifffile` (Pillow when tifffile lacks the codec): 8/16-bit,
  float, and up to 8 channels on the first or the last axis (the smaller end; the last on a
  tie). Other integer types become uint16 when all values lie in 0..65535; float64 becomes
  float32; bool images, NaN/inf pixels and stacks of more than 8 frames are errors.
* Other formats are read with Pillow: 'I;16*' (and 'I' within 0..65535) -> uint16, 'F' ->
  float32, RGB/RGBA -> 3/4 channels, palette, LA and the rest -> grey by `convert('L')`.
* Channels: `channel=K` (0-based) takes channel K; without it an 8-bit RGB/RGBA image is
  converted to grey as PIL's `convert('L')` does (ITU-R 601-2 luma
  L = R*299/1000 + G*587/1000 + B*114/1000, alpha ignored), any other multi-channel image
  is an error asking for --channel.
* Pillow's decompression-bomb limit is lifted while we decode (`Image.MAX_IMAGE_PIXELS` is
  None inside `_read_pil` and restored after), so 16,384 x 16,384 microscopy images open.

Then each image is normalised by `molml_jax.data.intensity` (`normalize`): "scale" (the
default, the course reference: uint8 / 255, uint16 / 65535, float as it is if within 0..1;
one pixel type per dataset) or "percentile" (Cellpose's normalize99, per image, independent
of bit depth). 8-bit images under "scale" give exactly the course's float32 values.

Masks are read raw too (no channel choice; RGB masks become grey as above). A mask is a
LABEL IMAGE (each object its own integer) when it comes from a lossless file (not
.jpg/.jpeg), has integer pixels, and its distinct values are not a subset of {0, the type's
maximum (255 or 65535)}: then its foreground (labels > 0) is the 0/1 mask and `labels` keeps
the int32 instance labels (resized nearest-neighbour). So a 0/1 PNG is a one-object label
image. Any other mask is divided by its type's maximum (a 0/255 mask becomes 0/1; the course's
JPEG masks keep their soft compression noise; float masks must lie within 0..1), and
`binarize_masks=True` thresholds it at 0.5 to {0, 1}.
"""

from __future__ import annotations

import csv
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

from molml_jax.data import intensity
from molml_jax.errors import InputError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
TAG_SEPARATORS = "_-."
MAX_CHANNELS = 8  # a 3-D TIFF whose first or last axis is at most this long has channels there
_LOSSY = (".jpg", ".jpeg")
_TIFF = (".tif", ".tiff")
_IGNORED_NAMES = {"thumbs.db", "desktop.ini", "__macosx"}
_SHOW = 5  # how many names a message lists


def default_cells_tarball() -> Path:
    """The course's nucleus images: 334 grey 256x256 `N_cells.jpg` + `N_masks.jpg` pairs."""
    return Path(
        str(importlib.resources.files("molml_jax.data") / "bundled" / "cell_segmentation_jpeg.tar.gz")
    )


@dataclasses.dataclass(frozen=True)
class ImagePairs:
    """Images and masks read from one folder, tarball or pairs table, sorted by name.

    names: the pair names (NAME, see the module docstring), one per pair.
    images, masks: float32 (N, H, W); masks are 0/1 for label images.
    source: the folder, tarball or table, as given.
    skipped: names of images that had no mask (not in `names`).
    pixel_kind: the images' pixel type, "uint8", "uint16" or "float" ("mixed" under
        "percentile" when they differ).
    normalize: the intensity rule applied to the images (`intensity.NORMALIZATIONS`).
    labels: per pair, int32 (H, W) instance labels when its mask is a label image, else None.
    """

    source: str
    names: list[str]
    images: np.ndarray
    masks: np.ndarray
    skipped: list[str] = dataclasses.field(default_factory=list)
    pixel_kind: str = "uint8"
    normalize: str = "scale"
    labels: list = dataclasses.field(default_factory=list)

    def __len__(self) -> int:
        return len(self.names)


# ---------------------------------------------------------------- listing files


@dataclasses.dataclass
class ImageFile:
    """One image file in a folder, a tarball or a pairs table, not yet decoded.

    rel: its path inside the folder / tarball (as listed, for a table); where: how messages
    name it; path: on disk (folders, tables, single files); data: contents (tarballs).
    """

    rel: PurePosixPath
    where: str
    path: Path | None = None
    data: bytes | None = None

    def read(self) -> bytes:
        """The file's bytes."""
        if self.data is not None:
            return self.data
        try:
            return self.path.read_bytes()  # type: ignore[union-attr]
        except OSError as err:
            raise InputError(f"{self.where}: cannot read ({err.strerror or err})") from None

    def read_raw(self, channel: int | None = None) -> np.ndarray:
        """The raw (H, W) pixels, uint8, uint16 or float32 (see the module docstring)."""
        return _decode(self, channel)


def _ignored(rel: PurePosixPath) -> bool:
    return any(part.startswith(".") or part.lower() in _IGNORED_NAMES for part in rel.parts)


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _is_tarball(path: Path) -> bool:
    return path.name.lower().endswith(TAR_SUFFIXES)


def _list_files(source: Path, want) -> list[ImageFile]:
    """Image files under a folder (recursively) or in a tarball whose name passes `want`."""
    if not source.exists():
        raise InputError(f"{source}: no such file or folder")
    files: list[ImageFile] = []
    if source.is_dir():
        for root, dirs, names in os.walk(source):
            dirs[:] = sorted(d for d in dirs if not (d.startswith(".") or d.lower() in _IGNORED_NAMES))
            for name in sorted(names):
                path = Path(root) / name
                rel = PurePosixPath(path.relative_to(source).as_posix())
                if _ignored(rel) or not _is_image_name(name) or not want(rel):
                    continue
                files.append(ImageFile(rel=rel, where=str(path), path=path))
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
                files.append(ImageFile(rel=rel, where=f"{source}: {member.name}", data=data))
    except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
        detail = " ".join((str(err) or type(err).__name__).split())  # tarfile's text spans lines
        raise InputError(f"{source}: not a readable tarball ({detail})") from None
    return files


def _split_tag(rel: PurePosixPath, tag: str) -> str | None:
    """NAME if rel's stem ends with a separator and `tag` (case-insensitive), else None."""
    stem = rel.name.rsplit(".", 1)[0]
    n = len(tag)
    if len(stem) > n + 1 and stem[-n:].lower() == tag.lower() and stem[-n - 1] in TAG_SEPARATORS:
        return stem[: -n - 1]
    return None


def _split_tag_start(rel: PurePosixPath, tag: str) -> str | None:
    """NAME if rel's stem starts with `tag` (case-insensitive) and a separator, else None."""
    stem = rel.name.rsplit(".", 1)[0]
    n = len(tag)
    if len(stem) > n + 1 and stem[:n].lower() == tag.lower() and stem[n] in TAG_SEPARATORS:
        return stem[n + 1:]
    return None


def _match(rel: PurePosixPath, tags: Sequence[str], start: bool) -> tuple[str, str] | None:
    """(tag, NAME) for the first of `tags` that rel carries in the given form, else None."""
    split = _split_tag_start if start else _split_tag
    for tag in tags:
        name = split(rel, tag)
        if name is not None:
            return tag, name
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


def _unreadable(where: str, err: BaseException) -> InputError:
    detail = str(err).splitlines()[0] if str(err) else type(err).__name__
    return InputError(f"{where}: not a readable image ({detail})")


def _read_pil(data: bytes, where: str) -> np.ndarray:
    """Pixels by Pillow: (H, W) uint8/uint16/float32, or (H, W, 3|4) uint8 for RGB(A)."""
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # microscopy images are large; restored below
    try:
        with Image.open(io.BytesIO(data)) as im:
            frames = getattr(im, "n_frames", 1)
            if frames > 1:
                raise InputError(f"{where}: has {frames} frames; expected one 2-D image")
            im.load()
            mode = im.mode
            if mode.startswith("I;16"):
                return np.asarray(im).astype(np.uint16)
            if mode == "I":
                raw = np.asarray(im)
                if raw.size and (raw.min() < 0 or raw.max() > 65535):
                    raise InputError(f"{where}: 32-bit integer pixels outside 0..65535; save as 8- or 16-bit")
                return raw.astype(np.uint16)
            if mode == "F":
                return np.asarray(im, dtype=np.float32)
            if mode in ("RGB", "RGBA"):
                return np.asarray(im, dtype=np.uint8)
            grey = im if mode == "L" else im.convert("L")
            return np.asarray(grey, dtype=np.uint8)
    except InputError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise _unreadable(where, err) from None
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def _read_tiff(data: bytes, where: str) -> tuple[np.ndarray, tuple[int, ...]]:
    """Pixels by tifffile, channels moved last: (H, W) or (H, W, C), C <= MAX_CHANNELS; and
    the shape as stored (for messages). Without tifffile (a base dependency, absent from
    some accelerator images) Pillow reads what it can (single-channel 8/16-bit and float)."""
    try:
        import tifffile
    except ImportError:
        arr = _read_pil(data, where)
        return arr, arr.shape
    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            if not tif.series:
                raise InputError(f"{where}: not a readable image (no image in the TIFF)")
            if len(tif.series) > 1:
                raise InputError(f"{where}: holds {len(tif.series)} images; expected one 2-D image")
            arr = tif.series[0].asarray()
    except InputError:
        raise
    except (ValueError, KeyError, IndexError, TypeError, OSError, RuntimeError, NotImplementedError) as err:
        try:  # a compression tifffile cannot decode without imagecodecs (LZW, JPEG): Pillow can
            arr = _read_pil(data, where)
            return arr, arr.shape
        except InputError:
            raise _unreadable(where, err) from None
    shape = arr.shape
    while arr.ndim > 2 and arr.shape[0] == 1:
        arr = arr[0]
    while arr.ndim > 2 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3:
        first, last = arr.shape[0], arr.shape[-1]
        if min(first, last) > MAX_CHANNELS:
            raise InputError(
                f"{where}: has {first} frames or pages (shape {shape}); expected one 2-D image "
                f"(or up to {MAX_CHANNELS} channels)"
            )
        if first < last or last > MAX_CHANNELS:
            arr = np.moveaxis(arr, 0, -1)
    elif arr.ndim != 2:
        raise InputError(f"{where}: has shape {shape}; expected one 2-D image (or up to {MAX_CHANNELS} channels)")
    return arr, shape


def _native(arr: np.ndarray, where: str) -> np.ndarray:
    """uint8, uint16 or float32 pixels (the only types past this point)."""
    dtype = arr.dtype
    if dtype == np.uint8 or dtype == np.uint16 or dtype == np.float32:
        return arr
    if dtype == np.bool_:
        raise InputError(f"{where}: 1-bit (boolean) pixels; save as 8- or 16-bit")
    if np.issubdtype(dtype, np.integer):
        if arr.size and (int(arr.min()) < 0 or int(arr.max()) > 65535):
            raise InputError(f"{where}: {dtype} pixels outside 0..65535; save as 8- or 16-bit")
        return arr.astype(np.uint16)
    if np.issubdtype(dtype, np.floating):
        return arr.astype(np.float32)
    raise InputError(f"{where}: {dtype} pixels; save as 8- or 16-bit (or floating-point) grey")


def _grey(arr: np.ndarray, where: str, shape: tuple, channel: int | None, role: str = "image") -> np.ndarray:
    """(H, W) from (H, W) or (H, W, C) pixels: channel `channel`, or grey for 8-bit RGB(A)."""
    count = 1 if arr.ndim == 2 else arr.shape[-1]
    if channel is None:
        if arr.ndim == 2:
            return arr
        if arr.dtype == np.uint8 and count in (3, 4):  # exactly PIL's convert('L')
            colour = Image.fromarray(np.ascontiguousarray(arr), "RGB" if count == 3 else "RGBA")
            return np.asarray(colour.convert("L"))
        if role == "mask":
            raise InputError(f"{where}: mask has {count} channels (shape {shape}); save masks as one-channel images")
        raise InputError(f"{where}: has {count} channels (shape {shape}); choose one with --channel K (0-based)")
    if not 0 <= channel < count:
        raise InputError(f"{where}: has {count} channel(s); --channel {channel} is out of range (0..{count - 1})")
    return arr if arr.ndim == 2 else arr[..., channel]


def _decode(file: ImageFile, channel: int | None = None, role: str = "image") -> np.ndarray:
    """Raw (H, W) pixels, uint8, uint16 or float32 (see the module docstring)."""
    data = file.read()
    if not data:
        raise InputError(f"{file.where}: empty file, not an image")
    tiff = file.rel.name.lower().endswith(_TIFF)
    if tiff:
        arr, shape = _read_tiff(data, file.where)
    else:
        arr = _read_pil(data, file.where)
        shape = arr.shape
    arr = _grey(_native(arr, file.where), file.where, shape, channel, role)
    if arr.dtype == np.float32 and not np.isfinite(arr).all():
        raise InputError(f"{file.where}: has NaN or infinite pixels")
    return np.ascontiguousarray(arr)


def _mask(raw: np.ndarray, file: ImageFile) -> tuple[np.ndarray, np.ndarray | None]:
    """(float32 (H, W) mask, int32 (H, W) labels or None) from a raw mask (module docstring)."""
    kind = intensity.pixel_kind(raw)
    if kind == "float":
        if raw.size and (raw.min() < 0 or raw.max() > 1):
            raise InputError(
                f"{file.where}: floating-point mask values from {raw.min():.6g} to {raw.max():.6g}, outside 0..1; "
                "save masks as 0/255 or as integer labels (8- or 16-bit)"
            )
        return raw.astype(np.float32), None
    top = 255 if kind == "uint8" else 65535
    if not file.rel.name.lower().endswith(_LOSSY):
        present = np.flatnonzero(intensity.histogram(raw))
        if np.setdiff1d(present, [0, top]).size:
            labels = raw.astype(np.int32)
            return (labels > 0).astype(np.float32), labels
    return raw.astype(np.float32) / float(top), None


def _resize(arr: np.ndarray, size: tuple[int, int], nearest: bool) -> np.ndarray:
    h, w = size
    if arr.shape == (h, w):
        return arr
    im = Image.fromarray(np.ascontiguousarray(arr, dtype=np.float32), mode="F")
    out = im.resize((w, h), Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR)
    return np.asarray(out, dtype=np.float32)


def _resize_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    if labels.shape == (h, w):
        return labels
    out = Image.fromarray(np.ascontiguousarray(labels, dtype=np.int32)).resize((w, h), Image.Resampling.NEAREST)
    return np.asarray(out, dtype=np.int32)


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


def _read_pairs(
    source: str,
    items: Sequence[tuple[str, ImageFile, ImageFile]],
    *,
    size: tuple[int, int] | None,
    binarize_masks: bool,
    normalize: str,
    channel: int | None,
    mask_word: str,
    skipped: list[str],
) -> ImagePairs:
    """Decode, check and stack (name, image file, mask file) items, in the given order."""
    if normalize not in intensity.NORMALIZATIONS:
        raise InputError(f"normalize: unknown rule {normalize!r}; expected one of {', '.join(intensity.NORMALIZATIONS)}")
    xs, ys, labels = [], [], []
    first: tuple[str, tuple[int, int]] | None = None
    kinds: dict[str, str] = {}  # pixel kind -> the first image of that kind
    soft_max = None  # the largest value of the masks that are not label images
    for _, image, mask in items:
        raw = _decode(image, channel)
        kind = intensity.pixel_kind(raw)
        kinds.setdefault(kind, image.rel.as_posix())
        if normalize == "scale" and len(kinds) > 1:
            (k0, a), (k1, b) = kinds.items()
            raise InputError(
                f"{source}: images of mixed bit depth ({a} is {intensity.describe_kind(k0)}, {b} is "
                f"{intensity.describe_kind(k1)}); use --normalize percentile, or convert them to one"
            )
        raw_mask = _decode(mask, None, role="mask")
        if raw.shape != raw_mask.shape:
            raise InputError(
                f"{image.where}: image is {raw.shape[0]}x{raw.shape[1]} (HxW) but its mask "
                f"{mask.rel.name} is {raw_mask.shape[0]}x{raw_mask.shape[1]}"
            )
        x = intensity.normalize(raw, normalize, where=image.where)
        y, lab = _mask(raw_mask, mask)
        del raw, raw_mask
        if lab is None and binarize_masks:
            y = (y > 0.5).astype(np.float32)
        if size is not None:
            x = _resize(x, size, nearest=False)
            if lab is None:
                y = _resize(y, size, nearest=binarize_masks)
            else:
                lab = _resize_labels(lab, size)
                y = (lab > 0).astype(np.float32)
        elif first is None:
            first = (image.rel.as_posix(), x.shape)
        elif x.shape != first[1]:
            (h0, w0), (h1, w1) = first[1], x.shape
            raise InputError(
                f"{source}: images differ in size ({first[0]} is {h0}x{w0}, {image.rel.as_posix()} is "
                f"{h1}x{w1}, HxW); pass --resize H W (resize=(H, W)) to resize them all"
            )
        if lab is None and y.size:
            soft_max = max(soft_max or 0.0, float(y.max()))
        xs.append(x)
        ys.append(y)
        labels.append(lab)
    if not binarize_masks and soft_max is not None and 0.0 < soft_max < 0.5:
        warnings.warn(
            f"{source}: every {mask_word} value is below 0.5 (largest {soft_max * 255:.0f}/255): were the masks "
            "saved as labels 0/1 or 0..N in JPEG files? Values are divided by 255; save labels losslessly (PNG, TIFF)",
            stacklevel=3,
        )
    return ImagePairs(
        source=source,
        names=[name for name, _, _ in items],
        images=np.stack(xs).astype(np.float32, copy=False),
        masks=np.stack(ys).astype(np.float32, copy=False),
        skipped=skipped,
        pixel_kind=next(iter(kinds)) if len(kinds) == 1 else "mixed",
        normalize=normalize,
        labels=labels,
    )


def read_image_pairs(
    source: str | os.PathLike,
    *,
    image_tag: str = "cells",
    mask_tag: str = "masks",
    resize: Sequence[int] | None = None,
    binarize_masks: bool = False,
    normalize: str = "scale",
    channel: int | None = None,
) -> ImagePairs:
    """Read `NAME_{image_tag}.EXT` / `NAME_{mask_tag}.EXT` pairs (or `{image_tag}_NAME.EXT` /
    `{mask_tag}_NAME.EXT`) from a folder or tarball.

    See the module docstring for the pairing rule, the pixel values and label masks.
    `normalize` is the intensity rule ("scale" or "percentile", `molml_jax.data.intensity`);
    `channel` (0-based) picks one channel of multi-channel images. `resize=(H, W)` resizes
    images bilinearly and masks bilinearly (nearest when `binarize_masks`, after
    thresholding, so they stay {0, 1}; label images always nearest). Without it all pairs
    must have one size. Returns images and masks as float32 (N, H, W).

    Images without a mask are skipped, listed in `skipped` and reported with
    `warnings.warn`; masks (not label images) whose values are all below 0.5 are reported
    with a warning too. Raises `InputError` (one line, naming the file) for: a missing path,
    a corrupt tarball, tags at the start of some names and the end of others, a mask without
    its image, two files for one name, no pairs, an unreadable image, an image and mask of
    different sizes, mixed sizes without `resize`, mixed bit depths under "scale".
    """
    src = Path(source)
    size = _check_size(resize)
    if not image_tag or not mask_tag or image_tag.lower() == mask_tag.lower():
        raise InputError(
            f"image_tag {image_tag!r} and mask_tag {mask_tag!r} must be different and non-empty"
        )
    # the longer tag first, so that 'x_mask_img' is a mask when the tags are 'img', 'mask_img'
    tags = sorted((image_tag, mask_tag), key=lambda t: -len(t))

    def want(rel: PurePosixPath) -> bool:
        return _match(rel, tags, start=False) is not None or _match(rel, tags, start=True) is not None

    files = _list_files(src, want)
    end_only = [f for f in files if _match(f.rel, tags, start=True) is None]
    start_only = [f for f in files if _match(f.rel, tags, start=False) is None]
    if end_only and start_only:
        raise InputError(
            f"{src}: tags at both ends of file names (e.g. {end_only[0].rel.name} and {start_only[0].rel.name}); "
            "name every pair one way, or list the pairs in a table (--pairs TABLE.csv)"
        )
    at_start = bool(start_only)

    images: dict[PurePosixPath, ImageFile] = {}
    masks: dict[PurePosixPath, ImageFile] = {}
    for f in files:
        found = _match(f.rel, tags, start=at_start)
        if found is None:
            continue
        tag, prefix = found
        table = images if tag == image_tag else masks
        key = f.rel.parent / prefix
        if key in table:
            raise InputError(
                f"{src}: two {tag} files for '{key.as_posix()}': {table[key].rel.as_posix()} and "
                f"{f.rel.as_posix()}"
            )
        table[key] = f

    orphans = sorted((k for k in masks if k not in images), key=lambda k: _natural_key(k.as_posix()))
    if orphans:
        f = masks[orphans[0]]
        more = f" (and {len(orphans) - 1} more)" if len(orphans) > 1 else ""
        name = orphans[0].name
        if at_start:
            expected = f"{image_tag}{f.rel.name[len(mask_tag)]}{name}"
        else:
            expected = f"{name}{f.rel.name[len(name)]}{image_tag}"
        raise InputError(f"{f.where}: mask without its image (no {expected}.EXT){more}")
    keys = [k for k in images if k in masks]
    lonely = [k for k in images if k not in masks]
    if not keys:
        found = f"{len(images)} {image_tag} file(s) without masks" if images else "no matching files"
        raise InputError(
            f"{src}: no image/mask pairs (expected NAME_{image_tag}.EXT with NAME_{mask_tag}.EXT, or "
            f"{image_tag}_NAME.EXT with {mask_tag}_NAME.EXT, EXT one of "
            f"{', '.join(e[1:] for e in IMAGE_EXTENSIONS)}; found {found}); "
            "or list the pairs in a table (--pairs TABLE.csv)"
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
    items = [(names_of[k], images[k], masks[k]) for k in keys]
    return _read_pairs(str(source), items, size=size, binarize_masks=binarize_masks, normalize=normalize,
                       channel=channel, mask_word=mask_tag, skipped=skipped)


def read_pairs_table(
    table: str | os.PathLike,
    *,
    resize: Sequence[int] | None = None,
    binarize_masks: bool = False,
    normalize: str = "scale",
    channel: int | None = None,
) -> ImagePairs:
    """Read the image/mask pairs listed in a table: CSV (a .tsv is split at tabs) with
    columns `image` and `mask` (others ignored), one pair per line.

    Paths are relative to the table's folder (absolute paths allowed). A pair's name is its
    image path relative to that folder, without the extension; pairs are sorted by name in
    natural order. Everything else is as `read_image_pairs`. Raises `InputError` naming the
    table and line (1 = the header) for: no such table, an empty table, a missing column, an
    empty cell, a file that is not an image or does not exist, an image listed twice; and,
    as `read_image_pairs`, for unreadable images and sizes or bit depths that do not fit.
    """
    path = Path(table)
    size = _check_size(resize)
    if not path.is_file():
        raise InputError(f"{table}: no such file" if not path.exists() else f"{table}: not a table file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{table}: cannot read ({getattr(err, 'strerror', None) or err})") from None
    reader = csv.reader(io.StringIO(text), delimiter="\t" if path.suffix.lower() in (".tsv", ".tab") else ",")
    empty = f"{table}: empty table (expected a header line 'image,mask' and one line per pair)"
    header = next((row for row in reader if any(cell.strip() for cell in row)), None)
    if header is None:
        raise InputError(empty)
    columns = [cell.strip() for cell in header]
    lowered = [c.lower() for c in columns]
    missing = [c for c in ("image", "mask") if c not in lowered]
    if missing:
        raise InputError(
            f"{table} line {reader.line_num}: no column {' or '.join(repr(c) for c in missing)} "
            f"(columns found: {', '.join(columns)}); expected columns image and mask"
        )
    at = {c: lowered.index(c) for c in ("image", "mask")}
    folder = path.parent
    rows: list[tuple[str, ImageFile, ImageFile]] = []
    seen: dict[Path, int] = {}  # resolved image path -> line
    named: dict[str, tuple[str, int]] = {}  # pair name -> (image as listed, line)
    for row in reader:
        if not any(cell.strip() for cell in row):
            continue
        line = reader.line_num
        cells = {}
        for column, i in at.items():
            cell = row[i].strip() if i < len(row) else ""
            if not cell:
                raise InputError(f"{table} line {line}: empty {column} cell")
            file = Path(cell) if Path(cell).is_absolute() else folder / cell
            if not _is_image_name(cell):
                raise InputError(
                    f"{table} line {line}: {cell}: not an image file "
                    f"(expected {', '.join(e[1:] for e in IMAGE_EXTENSIONS)})"
                )
            if not file.is_file():
                raise InputError(f"{table} line {line}: {cell}: no such file")
            cells[column] = (cell, file)
        (image, image_path), (mask, mask_path) = cells["image"], cells["mask"]
        resolved = image_path.resolve()
        if resolved in seen:
            raise InputError(f"{table} line {line}: {image} is listed twice (also on line {seen[resolved]})")
        seen[resolved] = line
        name = _table_name(image, image_path, folder)
        if name in named:
            other, other_line = named[name]
            raise InputError(
                f"{table} line {line}: {image} and {other} (line {other_line}) give one pair name '{name}'"
            )
        named[name] = (image, line)
        rows.append((
            name,
            ImageFile(rel=PurePosixPath(image), where=f"{table} line {line}: {image}", path=image_path),
            ImageFile(rel=PurePosixPath(mask), where=f"{table} line {line}: {mask}", path=mask_path),
        ))
    if not rows:
        raise InputError(empty)
    rows.sort(key=lambda item: _natural_key(item[0]))
    return _read_pairs(str(table), rows, size=size, binarize_masks=binarize_masks, normalize=normalize,
                       channel=channel, mask_word="mask", skipped=[])


def _table_name(cell: str, path: Path, folder: Path) -> str:
    """The image path relative to the table's folder (as listed when relative), no extension."""
    rel = PurePosixPath(cell.replace("\\", "/"))
    if Path(cell).is_absolute():
        try:
            rel = PurePosixPath(path.resolve().relative_to(folder.resolve()).as_posix())
        except ValueError:
            rel = PurePosixPath(path.as_posix())
    return rel.with_suffix("").as_posix()


def list_images(path: str | os.PathLike, *, exclude_tag: str | None = None) -> list[tuple[str, ImageFile]]:
    """(name, file) of the images to segment, not yet decoded: one image file, or every image
    in a folder (recursive) or tarball (whose bytes are read now).

    OS metadata is ignored, and so are files whose stem carries `exclude_tag` at its end or
    start (e.g. 'masks', to point this at a training folder). Names are the paths without
    extension, less the shared folders (a single file: its stem), natural-sorted.
    """
    src = Path(path)
    if src.is_file() and not _is_tarball(src):
        if not _is_image_name(src.name):
            raise InputError(
                f"{src}: not an image file (expected {', '.join(e[1:] for e in IMAGE_EXTENSIONS)})"
            )
        return [(src.name.rsplit(".", 1)[0], ImageFile(rel=PurePosixPath(src.name), where=str(src), path=src))]

    def want(rel: PurePosixPath) -> bool:
        if exclude_tag is None:
            return True
        return _split_tag(rel, exclude_tag) is None and _split_tag_start(rel, exclude_tag) is None

    files = _list_files(src, want)
    if not files:
        raise InputError(
            f"{src}: no images (expected files ending in {', '.join(e[1:] for e in IMAGE_EXTENSIONS)})"
        )
    keys = [f.rel.parent / f.rel.name.rsplit(".", 1)[0] for f in files]
    names = _strip_common_dirs(keys)
    seen: dict[str, ImageFile] = {}
    for n, f in zip(names, files):
        if n in seen:
            raise InputError(
                f"{src}: two images named '{n}': {seen[n].rel.as_posix()} and {f.rel.as_posix()}"
            )
        seen[n] = f
    order = sorted(range(len(files)), key=lambda i: _natural_key(names[i]))
    return [(names[i], files[i]) for i in order]


def read_images_for_prediction(
    path: str | os.PathLike,
    *,
    exclude_tag: str | None = None,
    normalize: str = "scale",
    channel: int | None = None,
    trained_kind: str | None = None,
) -> tuple[list[str], list[np.ndarray]]:
    """Images to segment (see `list_images`), decoded: (names, float32 (H, W) images).

    Images may have any size; each is read raw (`channel` as in `read_image_pairs`) and
    normalised on its own by `normalize`; `trained_kind`, the pixel kind a "scale" model was
    trained on, refuses images of another bit depth (`intensity.normalization`).
    """
    listed = list_images(path, exclude_tag=exclude_tag)
    return [name for name, _ in listed], [
        intensity.normalize(f.read_raw(channel), normalize, trained_kind=trained_kind, where=f.where)
        for _, f in listed
    ]


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
    # uint8 throughout (np.where would make an int64 copy: 8 bytes per pixel of a large mask)
    Image.fromarray(fg.astype(np.uint8) * np.uint8(255), mode="L").save(out, format="PNG")
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
