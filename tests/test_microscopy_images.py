"""Microscopy inputs: tags at the start of names, pair tables, 16-bit/float/multi-channel
TIFFs, intensity rules, label-image masks, prediction inputs listed without decoding."""

import io
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from molml_jax.data.images import list_images, read_image_pairs, read_images_for_prediction, read_pairs_table
from molml_jax.data.intensity import normalization, normalize, percentiles, pixel_kind
from molml_jax.errors import InputError


def save(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in (".tif", ".tiff"):
        photometric = "rgb" if arr.ndim == 3 and arr.shape[-1] == 3 and arr.dtype == np.uint8 else "minisblack"
        tifffile.imwrite(path, arr, photometric=photometric)
    else:
        Image.fromarray(arr).save(path)
    return path


def grey(h: int, w: int, seed: int, top: int = 255, dtype=np.uint8) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, top + 1, size=(h, w)).astype(dtype)


def binary(h: int, w: int, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).random((h, w)) > 0.5).astype(np.uint8) * 255


def raw_of(path: Path, channel=None) -> np.ndarray:
    [(_, file)] = list_images(path)
    return file.read_raw(channel)


# ---------------------------------------------------------------- pairing


def test_tags_at_the_start_pair(tmp_path):
    for i in (12, 3):
        save(tmp_path / "d" / f"bubbles_{i}.jpg", grey(8, 8, i))
        save(tmp_path / "d" / f"MASKS-{i}.png", binary(8, 8, i))
    pairs = read_image_pairs(tmp_path / "d", image_tag="bubbles", mask_tag="masks")
    assert pairs.names == ["3", "12"]
    jpeg = np.asarray(Image.open(tmp_path / "d" / "bubbles_12.jpg"), np.float32) / 255
    np.testing.assert_array_equal(pairs.images[1], jpeg)
    np.testing.assert_array_equal(pairs.masks[0], binary(8, 8, 3) / 255.0)
    assert pairs.labels == [None, None] and pairs.pixel_kind == "uint8" and pairs.normalize == "scale"
    save(tmp_path / "d" / "masks_7.png", binary(8, 8, 7))
    with pytest.raises(InputError, match=r"masks_7\.png: mask without its image \(no bubbles_7\.EXT\)"):
        read_image_pairs(tmp_path / "d", image_tag="bubbles", mask_tag="masks")


def test_tags_at_the_start_in_a_tarball(tmp_path):
    for i in (1, 2):
        save(tmp_path / "d" / "sub" / f"cells_{i}.png", grey(6, 6, i))
        save(tmp_path / "d" / "sub" / f"masks_{i}.png", binary(6, 6, i))
    tar_path = tmp_path / "d.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tar:
        tar.add(tmp_path / "d", arcname="top")
    pairs = read_image_pairs(tar_path)
    assert pairs.names == ["1", "2"]
    np.testing.assert_array_equal(pairs.images[1], grey(6, 6, 2) / np.float32(255))


def test_tags_at_both_ends_refused(tmp_path):
    save(tmp_path / "1_cells.png", grey(4, 4, 1))
    save(tmp_path / "1_masks.png", binary(4, 4, 1))
    save(tmp_path / "masks_2.png", binary(4, 4, 2))
    with pytest.raises(InputError, match=r"tags at both ends of file names \(e\.g\. 1_cells\.png and masks_2\.png\)"
                       r".*--pairs TABLE\.csv"):
        read_image_pairs(tmp_path)


def test_no_pairs_message_names_both_forms(tmp_path):
    with pytest.raises(InputError, match=r"NAME_cells\.EXT with NAME_masks\.EXT, or cells_NAME\.EXT with "
                                         r"masks_NAME\.EXT.*--pairs TABLE\.csv"):
        read_image_pairs(tmp_path)


def test_pairs_table(tmp_path):
    save(tmp_path / "raw" / "b" / "x10.tif", grey(5, 7, 10))
    save(tmp_path / "raw" / "b" / "x2.png", grey(5, 7, 2))
    save(tmp_path / "seg" / "x10.png", binary(5, 7, 10))
    save(tmp_path / "seg" / "x2.png", binary(5, 7, 2))
    table = tmp_path / "pairs.csv"
    table.write_text(f"image,note,mask\nraw/b/x10.tif,a,seg/x10.png\n\n{tmp_path / 'raw/b/x2.png'},b,seg/x2.png\n")
    pairs = read_pairs_table(table)
    assert pairs.names == ["raw/b/x2", "raw/b/x10"] and pairs.source == str(table)
    np.testing.assert_array_equal(pairs.images[1], grey(5, 7, 10) / np.float32(255))
    np.testing.assert_array_equal(pairs.masks[0], binary(5, 7, 2) / np.float32(255))
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("mask\timage\nseg/x2.png\traw/b/x2.png\n")
    assert read_pairs_table(tsv).names == ["raw/b/x2"]


@pytest.mark.parametrize("text, message", [
    ("image,label\nraw/a.png,seg/a.png\n", r"pairs\.csv line 1: no column 'mask' \(columns found: image, label\)"),
    ("", r"pairs\.csv: empty table"),
    ("image,mask\n", r"pairs\.csv: empty table"),
    ("image,mask\nraw/a.png,seg/a.png\n\nraw/gone.tif,seg/a.png\n", r"pairs\.csv line 4: raw/gone\.tif: no such file"),
    ("image,mask\nraw/a.png,seg/a.png\n./raw/a.png,seg/a.png\n", r"pairs\.csv line 3: \./raw/a\.png is listed twice "
                                                                 r"\(also on line 2\)"),
    ("image,mask\nraw/a.png,seg/small.png\n", r"pairs\.csv line 2: raw/a\.png: image is 4x6 \(HxW\) but its mask "
                                              r"small\.png is 3x6"),
])
def test_pairs_table_errors(tmp_path, text, message):
    save(tmp_path / "raw" / "a.png", grey(4, 6, 0))
    save(tmp_path / "seg" / "a.png", binary(4, 6, 0))
    save(tmp_path / "seg" / "small.png", binary(3, 6, 0))
    (tmp_path / "pairs.csv").write_text(text)
    with pytest.raises(InputError, match=message) as err:
        read_pairs_table(tmp_path / "pairs.csv")
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------- raw pixels and channels


def test_sixteen_bit_png_and_tiff_raw(tmp_path):
    arr = grey(6, 5, 0, top=65535, dtype=np.uint16)
    for name in ("a.png", "a.tif"):
        raw = raw_of(save(tmp_path / name, arr))
        assert raw.dtype == np.uint16
        np.testing.assert_array_equal(raw, arr)
    wide = tmp_path / "w.tif"
    tifffile.imwrite(wide, arr.astype(np.int32))
    np.testing.assert_array_equal(raw_of(wide), arr)
    negative = arr.astype(np.int32)
    negative[0, 0] = -1
    tifffile.imwrite(wide, negative)
    with pytest.raises(InputError, match=r"w\.tif: int32 pixels outside 0\.\.65535"):
        raw_of(wide)
    tifffile.imwrite(wide, arr > 100)
    with pytest.raises(InputError, match=r"w\.tif: 1-bit .*save as 8- or 16-bit"):
        raw_of(wide)


def test_float_tiff(tmp_path):
    arr = np.random.default_rng(0).random((4, 6))  # float64, stored as it is
    raw = raw_of(save(tmp_path / "f.tif", arr))
    assert raw.dtype == np.float32
    np.testing.assert_array_equal(raw, arr.astype(np.float32))
    names, images = read_images_for_prediction(tmp_path / "f.tif")
    np.testing.assert_array_equal(images[0], arr.astype(np.float32))  # within [0, 1]: as it is
    save(tmp_path / "g.tif", arr * 100 - 3)
    with pytest.raises(InputError, match=r"g\.tif: floating-point pixels from .* outside 0\.\.1.*--normalize percentile"):
        read_images_for_prediction(tmp_path / "g.tif")
    got = read_images_for_prediction(tmp_path / "g.tif", normalize="percentile")[1][0]
    lo, hi = np.percentile((arr * 100 - 3).astype(np.float32), [1, 99])
    np.testing.assert_allclose(got, ((arr * 100 - 3).astype(np.float32) - lo) / (hi - lo), atol=1e-6)


@pytest.mark.parametrize("channels_first", [True, False])
def test_multichannel_tiff(tmp_path, channels_first):
    stack = np.stack([grey(9, 11, c, top=4000, dtype=np.uint16) for c in range(3)])
    path = save(tmp_path / "m.tif", stack if channels_first else np.moveaxis(stack, 0, -1))
    for c in range(3):
        np.testing.assert_array_equal(raw_of(path, channel=c), stack[c])
    shape = r"\(3, 9, 11\)" if channels_first else r"\(9, 11, 3\)"
    with pytest.raises(InputError, match=rf"m\.tif: has 3 channels \(shape {shape}\); choose one with --channel K"):
        raw_of(path)
    with pytest.raises(InputError, match=r"m\.tif: has 3 channel\(s\); --channel 3 is out of range \(0\.\.2\)"):
        raw_of(path, channel=3)


def test_channel_of_a_grey_image_and_stacks(tmp_path):
    path = save(tmp_path / "g.png", grey(4, 4, 0))
    np.testing.assert_array_equal(raw_of(path, channel=0), grey(4, 4, 0))
    with pytest.raises(InputError, match=r"g\.png: has 1 channel\(s\); --channel 1 is out of range \(0\.\.0\)"):
        raw_of(path, channel=1)
    frames = save(tmp_path / "t.tif", np.zeros((12, 16, 16), np.uint8))
    with pytest.raises(InputError, match=r"t\.tif: has 12 frames or pages \(shape \(12, 16, 16\)\); expected one 2-D"):
        raw_of(frames)


def test_rgb_to_grey_equals_pil(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, size=(7, 9, 3), dtype=np.uint8)
    want = np.asarray(Image.fromarray(rgb, "RGB").convert("L"))
    np.testing.assert_array_equal(raw_of(save(tmp_path / "c.tif", rgb)), want)
    np.testing.assert_array_equal(raw_of(save(tmp_path / "c.png", rgb)), want)
    np.testing.assert_array_equal(raw_of(tmp_path / "c.png", channel=1), rgb[..., 1])


def test_decompression_bomb_limit_lifted(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)  # a 20x20 image is 8x over: an error for Pillow
    path = save(tmp_path / "big.png", grey(20, 20, 0))
    with pytest.raises(Image.DecompressionBombError):
        Image.open(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(raw_of(path), grey(20, 20, 0))
    assert Image.MAX_IMAGE_PIXELS == 50  # restored


# ---------------------------------------------------------------- intensity rules


@pytest.mark.parametrize("dtype, top", [(np.uint8, 255), (np.uint16, 65535), (np.float32, None)])
@pytest.mark.parametrize("n", [1, 2, 3, 101, 997])
def test_percentiles_equal_numpy(dtype, top, n):
    rng = np.random.default_rng(n)
    raw = (rng.random(n) * 7.5).astype(dtype) if top is None else rng.integers(0, top + 1, n).astype(dtype)
    if n > 3:
        raw[: n // 3] = raw[0]  # ties
    assert percentiles(raw.reshape(1, n)) == tuple(np.percentile(raw, [1, 99]))


def test_percentile_rule_independent_of_bit_depth():
    raw8 = grey(30, 40, 0, top=200)
    raw16 = raw8.astype(np.uint16) * 16
    a, b = normalize(raw8, "percentile"), normalize(raw16, "percentile")
    assert a.dtype == np.float32 and np.abs(a - b).max() < 1e-6
    lo, hi = np.percentile(raw8, [1, 99])
    np.testing.assert_allclose(a, (raw8 - lo) / (hi - lo), atol=1e-6)
    assert normalization(raw8, "percentile") == (1 / (hi - lo), -lo / (hi - lo))
    assert normalization(np.full((3, 3), 7, np.uint16), "percentile") == (0.0, 0.0)
    np.testing.assert_array_equal(normalize(np.full((3, 3), 7, np.uint16), "percentile"), np.zeros((3, 3)))


def test_scale_rule():
    raw8, raw16 = grey(3, 3, 0), grey(3, 3, 0, top=65535, dtype=np.uint16)
    assert [pixel_kind(raw8), pixel_kind(raw16), pixel_kind(raw8.astype(np.float32))] == ["uint8", "uint16", "float"]
    assert normalization(raw8, "scale") == (1 / 255, 0.0) and normalization(raw16, "scale") == (1 / 65535, 0.0)
    np.testing.assert_array_equal(normalize(raw8, "scale"), raw8.astype(np.float32) / 255.0)
    np.testing.assert_array_equal(normalize(raw16, "scale", trained_kind="uint16"), raw16.astype(np.float32) / 65535.0)
    with pytest.raises(InputError, match=r"^x\.tif: 16-bit pixels, but this model was trained on 8-bit images divided "
                                         r"by 255; convert the image to 8-bit, or use a model trained with --normalize "
                                         r"percentile"):
        normalization(raw16, "scale", trained_kind="uint8", where="x.tif")
    assert normalization(raw16, "percentile", trained_kind="uint8")[0] > 0  # ignored by this rule
    with pytest.raises(InputError, match=r"unknown rule 'zscore'; expected one of scale, percentile"):
        normalize(raw8, "zscore")


def test_mixed_bit_depth(tmp_path):
    save(tmp_path / "a_cells.png", grey(4, 4, 0))
    save(tmp_path / "b_cells.tif", grey(4, 4, 1, top=65535, dtype=np.uint16))
    for n in "ab":
        save(tmp_path / f"{n}_masks.png", binary(4, 4, 0))
    with pytest.raises(InputError, match=r"images of mixed bit depth \(a_cells\.png is 8-bit, b_cells\.tif is 16-bit\); "
                                         r"use --normalize percentile"):
        read_image_pairs(tmp_path)
    pairs = read_image_pairs(tmp_path, normalize="percentile")
    assert pairs.pixel_kind == "mixed" and pairs.normalize == "percentile"
    np.testing.assert_array_equal(pairs.images[1], normalize(grey(4, 4, 1, top=65535, dtype=np.uint16), "percentile"))


# ---------------------------------------------------------------- masks


def test_label_image_masks(tmp_path):
    labels = np.zeros((4, 6), np.uint16)
    labels[:2, :2], labels[2:, 3:] = 1, 300
    save(tmp_path / "a_cells.png", grey(4, 6, 0))
    save(tmp_path / "a_masks.tif", labels)
    save(tmp_path / "b_cells.png", grey(4, 6, 1))
    save(tmp_path / "b_masks.png", binary(4, 6, 1))  # 0/255: not a label image
    pairs = read_image_pairs(tmp_path)
    assert pairs.labels[0].dtype == np.int32 and pairs.labels[1] is None
    np.testing.assert_array_equal(pairs.labels[0], labels)
    np.testing.assert_array_equal(pairs.masks[0], (labels > 0).astype(np.float32))
    resized = read_image_pairs(tmp_path, resize=(8, 12))
    want = np.repeat(np.repeat(labels, 2, axis=0), 2, axis=1)  # nearest, x2
    np.testing.assert_array_equal(resized.labels[0], want)
    np.testing.assert_array_equal(resized.masks[0], (want > 0).astype(np.float32))


def test_jpeg_mask_stays_soft(tmp_path):
    mask = np.zeros((16, 16), np.uint8)
    mask[4:12, 4:12] = 200
    save(tmp_path / "a_cells.png", grey(16, 16, 0))
    save(tmp_path / "a_masks.jpg", mask)
    pairs = read_image_pairs(tmp_path)
    jpeg = np.asarray(Image.open(tmp_path / "a_masks.jpg"))
    assert len(np.unique(jpeg)) > 2 and pairs.labels == [None]
    np.testing.assert_array_equal(pairs.masks[0], jpeg.astype(np.float32) / 255)


# ---------------------------------------------------------------- prediction inputs


def test_list_images_and_read_raw(tmp_path):
    save(tmp_path / "d" / "10_cells.tif", grey(4, 5, 10, top=65535, dtype=np.uint16))
    save(tmp_path / "d" / "2_cells.png", grey(4, 5, 2))
    save(tmp_path / "d" / "2_masks.png", binary(4, 5, 2))
    save(tmp_path / "d" / "masks_9.png", binary(4, 5, 9))
    listed = list_images(tmp_path / "d", exclude_tag="masks")
    assert [name for name, _ in listed] == ["2_cells", "10_cells"]
    assert listed[1][1].where == str(tmp_path / "d" / "10_cells.tif")
    np.testing.assert_array_equal(listed[1][1].read_raw(), grey(4, 5, 10, top=65535, dtype=np.uint16))
    names, images = read_images_for_prediction(tmp_path / "d", exclude_tag="masks")
    np.testing.assert_array_equal(images[0], grey(4, 5, 2).astype(np.float32) / 255.0)
    with pytest.raises(InputError, match=r"10_cells\.tif: 16-bit pixels, but this model was trained on 8-bit"):
        read_images_for_prediction(tmp_path / "d", exclude_tag="masks", trained_kind="uint8")
    tar_path = tmp_path / "d.tar"
    with tarfile.open(tar_path, "w") as tar:
        tar.add(tmp_path / "d", arcname="d")
    from_tar = list_images(tar_path, exclude_tag="masks")
    assert [name for name, _ in from_tar] == ["2_cells", "10_cells"]
    np.testing.assert_array_equal(from_tar[0][1].read_raw(), grey(4, 5, 2))
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.zeros((2, 2), np.uint8))
    assert buf.getvalue()  # tifffile writes to memory: the tarball path reads bytes the same way


def test_tiff_fallbacks_and_corrupt(tmp_path):
    arr = grey(6, 7, 3)
    Image.fromarray(arr).save(tmp_path / "lzw.tif", compression="tiff_lzw")  # needs imagecodecs in tifffile
    np.testing.assert_array_equal(raw_of(tmp_path / "lzw.tif"), arr)
    (tmp_path / "bad.tif").write_bytes(b"II*\x00" + b"garbage" * 5)
    with pytest.raises(InputError, match=r"bad\.tif: not a readable image"):
        raw_of(tmp_path / "bad.tif")
