"""Image/mask readers: bundled tarball, pairing rules, OS metadata, bad input, grey conversion."""

import hashlib
import io
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from molml_jax.data.images import (
    crop_to,
    default_cells_tarball,
    pad_to_multiple,
    read_image_pairs,
    read_images_for_prediction,
    write_mask_png,
)
from molml_jax.errors import InputError

CELLS_SHA256 = "60e57f3291d77b9c7360bfe0051316de405ac821a815e91785dca9dcc555844d"


def save(path: Path, arr: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode=mode).save(path)
    return path


def grey(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w), dtype=np.uint8)


def binary(h: int, w: int, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).random((h, w)) > 0.5).astype(np.uint8) * 255


@pytest.fixture
def pair_folder(tmp_path) -> Path:
    root = tmp_path / "pairs"
    for i in (1, 2, 10):
        save(root / f"{i}_cells.png", grey(8, 12, i))
        save(root / f"{i}_masks.png", binary(8, 12, 100 + i))
    return root


def test_bundled_tarball_reads_334_pairs():
    path = default_cells_tarball()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == CELLS_SHA256
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pairs = read_image_pairs(path)
    assert len(pairs) == 334 and pairs.skipped == []
    assert pairs.images.shape == pairs.masks.shape == (334, 256, 256)
    assert pairs.images.dtype == pairs.masks.dtype == np.float32
    for a in (pairs.images, pairs.masks):
        assert a.min() >= 0.0 and a.max() <= 1.0
    assert pairs.names[:3] == ["0", "1", "2"] and pairs.names[10] == "10"  # natural order
    # values are the file's bytes / 255
    with tarfile.open(path) as tar:
        raw = np.asarray(Image.open(tar.extractfile("cell_segmentation/7_cells.jpg")))
    np.testing.assert_array_equal(pairs.images[pairs.names.index("7")], raw.astype(np.float32) / 255)


def test_folder_pairs_sorted_and_scaled(pair_folder):
    pairs = read_image_pairs(pair_folder)
    assert pairs.names == ["1", "2", "10"]
    np.testing.assert_array_equal(pairs.images[2], grey(8, 12, 10).astype(np.float32) / 255)
    assert set(np.unique(pairs.masks)) <= {0.0, 1.0}


def test_other_tags_separators_and_nested_folders(tmp_path):
    root = tmp_path / "data"
    save(root / "a" / "img01_raw.png", grey(6, 6, 1))
    save(root / "a" / "img01_label.PNG", binary(6, 6, 2))
    save(root / "b" / "img02-RAW.tif", grey(6, 6, 3))
    save(root / "b" / "img02.label.bmp", binary(6, 6, 4))
    pairs = read_image_pairs(root, image_tag="raw", mask_tag="label")
    assert pairs.names == ["a/img01", "b/img02"]
    np.testing.assert_array_equal(pairs.images[1], grey(6, 6, 3).astype(np.float32) / 255)


def test_tag_that_ends_the_other_tag(tmp_path):
    save(tmp_path / "s1_img.png", grey(4, 4, 1))
    save(tmp_path / "s1_mask_img.png", binary(4, 4, 2))
    pairs = read_image_pairs(tmp_path, image_tag="img", mask_tag="mask_img")
    assert pairs.names == ["s1"]


def test_os_metadata_ignored(pair_folder):
    junk = b"\x00\x05\x16\x07 not an image"
    (pair_folder / "._1_cells.png").write_bytes(junk)
    (pair_folder / ".DS_Store").write_bytes(junk)
    (pair_folder / "Thumbs.db").write_bytes(junk)
    (pair_folder / "__MACOSX").mkdir()
    (pair_folder / "__MACOSX" / "._2_masks.png").write_bytes(junk)
    (pair_folder / ".hidden").mkdir()
    save(pair_folder / ".hidden" / "9_masks.png", binary(8, 12, 9))
    (pair_folder / "notes.txt").write_text("hello")
    assert read_image_pairs(pair_folder).names == ["1", "2", "10"]


def test_tarball_with_metadata(tmp_path, pair_folder):
    tar_path = tmp_path / "pairs.tgz"
    with tarfile.open(tar_path, "w:gz") as tar:
        tar.add(pair_folder, arcname="top")
        info = tarfile.TarInfo("__MACOSX/top/._1_cells.png")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"junk"))
    from_tar = read_image_pairs(tar_path)
    from_dir = read_image_pairs(pair_folder)
    assert from_tar.names == from_dir.names
    np.testing.assert_array_equal(from_tar.images, from_dir.images)


def test_image_without_mask_skipped_and_reported(pair_folder):
    save(pair_folder / "7_cells.png", grey(8, 12, 7))
    with pytest.warns(UserWarning, match=r"skipped 1 .*7"):
        pairs = read_image_pairs(pair_folder)
    assert pairs.names == ["1", "2", "10"] and pairs.skipped == ["7"]


def test_mask_without_image(pair_folder):
    save(pair_folder / "5_masks.png", binary(8, 12, 5))
    with pytest.raises(InputError, match=r"5_masks\.png: mask without its image"):
        read_image_pairs(pair_folder)


def test_no_pairs(tmp_path):
    save(tmp_path / "x_cells.png", grey(4, 4, 0))
    with pytest.raises(InputError, match=r"no image/mask pairs .*found 1 cells file\(s\) without masks"):
        read_image_pairs(tmp_path, mask_tag="label")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match=f"{empty.name}: no image/mask pairs"):
        read_image_pairs(empty)


def test_two_files_for_one_name(pair_folder):
    save(pair_folder / "1_cells.jpg", grey(8, 12, 1))
    with pytest.raises(InputError, match=r"two cells files for '1'"):
        read_image_pairs(pair_folder)


def test_zero_one_masks_warn(tmp_path):
    # a 0/1 PNG is a one-object label image (foreground 1, no warning); a 0/1 JPEG is not
    zero_one = (binary(16, 16, 0) // 255).astype(np.uint8)
    save(tmp_path / "a_cells.png", grey(16, 16, 0))
    save(tmp_path / "a_masks.png", zero_one)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pairs = read_image_pairs(tmp_path)
    np.testing.assert_array_equal(pairs.masks[0], zero_one.astype(np.float32))
    (tmp_path / "a_masks.png").unlink()
    save(tmp_path / "a_masks.jpg", zero_one)
    with pytest.warns(UserWarning, match="labels 0/1"):
        read_image_pairs(tmp_path)


def test_missing_path(tmp_path):
    with pytest.raises(InputError, match="nowhere: no such file or folder"):
        read_image_pairs(tmp_path / "nowhere")


def test_corrupt_image_named(pair_folder):
    (pair_folder / "2_masks.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(InputError, match=r"2_masks\.png: not a readable image") as err:
        read_image_pairs(pair_folder)
    assert "\n" not in str(err.value)


def test_truncated_jpeg_named(tmp_path):
    save(tmp_path / "1_masks.png", binary(32, 32, 1))
    buf = io.BytesIO()
    Image.fromarray(grey(32, 32, 1)).save(buf, format="JPEG")
    (tmp_path / "1_cells.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(InputError, match=r"1_cells\.jpg: not a readable image"):
        read_image_pairs(tmp_path)


def test_corrupt_tarballs(tmp_path):
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"this is not gzip at all" * 20)
    with pytest.raises(InputError, match=r"bad\.tar\.gz: not a readable tarball"):
        read_image_pairs(bad)
    truncated = tmp_path / "cut.tar.gz"
    truncated.write_bytes(default_cells_tarball().read_bytes()[:200_000])
    with pytest.raises(InputError, match=r"cut\.tar\.gz: not a readable tarball"):
        read_image_pairs(truncated)
    other = tmp_path / "data.csv"
    other.write_text("a,b\n")
    with pytest.raises(InputError, match=r"data\.csv: not a folder or a tarball"):
        read_image_pairs(other)


def test_mixed_sizes_need_resize(pair_folder):
    save(pair_folder / "3_cells.png", grey(10, 12, 3))
    save(pair_folder / "3_masks.png", binary(10, 12, 3))
    with pytest.raises(InputError, match=r"1_cells\.png is 8x12.*3_cells\.png is 10x12.*--resize H W"):
        read_image_pairs(pair_folder)
    pairs = read_image_pairs(pair_folder, resize=(16, 16), binarize_masks=True)
    assert pairs.images.shape == pairs.masks.shape == (4, 16, 16)
    assert set(np.unique(pairs.masks)) <= {0.0, 1.0}
    pairs = read_image_pairs(pair_folder, resize=(16, 16))
    assert pairs.masks.dtype == np.float32 and pairs.masks.max() <= 1.0


def test_image_and_mask_sizes_differ(pair_folder):
    save(pair_folder / "2_masks.png", binary(8, 10, 2))
    with pytest.raises(InputError, match=r"2_cells\.png: image is 8x12.*2_masks\.png is 8x10"):
        read_image_pairs(pair_folder, resize=(8, 12))


def test_binarize_masks(tmp_path):
    # soft values in a float TIFF (the same values in a PNG would make a label image)
    save(tmp_path / "a_cells.png", grey(4, 4, 0))
    soft = np.array([[0, 100, 127, 128], [129, 200, 255, 3]] * 2, np.float32) / 255
    save(tmp_path / "a_masks.tif", soft, mode="F")
    masks = read_image_pairs(tmp_path, binarize_masks=True).masks[0]
    np.testing.assert_array_equal(masks[0], [0, 0, 0, 1])
    np.testing.assert_array_equal(masks[1], [1, 1, 1, 0])


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "LA", "P"])
def test_grey_conversion_matches_pil(tmp_path, mode):
    rng = np.random.default_rng(0)
    rgba = Image.fromarray(rng.integers(0, 256, size=(9, 7, 4), dtype=np.uint8), mode="RGBA")
    im = rgba.convert(mode) if mode != "P" else rgba.convert("RGB").quantize(16)
    im.save(tmp_path / "z_cells.png")
    save(tmp_path / "z_masks.png", binary(9, 7, 1))
    got = read_image_pairs(tmp_path).images[0]
    np.testing.assert_array_equal(got, np.asarray(im.convert("L"), np.float32) / 255)


def test_sixteen_bit(tmp_path):
    arr = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000)
    Image.fromarray(arr).save(tmp_path / "s_cells.png")
    save(tmp_path / "s_masks.png", binary(3, 4, 0))
    np.testing.assert_allclose(read_image_pairs(tmp_path).images[0], arr / 65535.0, atol=1e-7)


def test_images_for_prediction(tmp_path, pair_folder):
    names, images = read_images_for_prediction(pair_folder, exclude_tag="masks")
    assert names == ["1_cells", "2_cells", "10_cells"]
    assert all(im.shape == (8, 12) and im.dtype == np.float32 for im in images)
    single = save(tmp_path / "one.jpg", grey(5, 9, 0))
    names, images = read_images_for_prediction(single)
    assert names == ["one"] and images[0].shape == (5, 9)
    with pytest.raises(InputError, match="nothing_here: no images"):
        read_images_for_prediction(_empty(tmp_path))
    (tmp_path / "bad.png").write_bytes(b"nope")
    with pytest.raises(InputError, match=r"bad\.png: not a readable image"):
        read_images_for_prediction(tmp_path / "bad.png")
    with pytest.raises(InputError, match="no such file"):
        read_images_for_prediction(tmp_path / "missing")


def _empty(tmp_path: Path) -> Path:
    d = tmp_path / "nothing_here"
    d.mkdir()
    (d / "readme.txt").write_text("x")
    return d


def test_write_mask_png(tmp_path):
    mask = np.array([[0, 1, 1], [0, 0, 1]], np.float32)
    out = write_mask_png(tmp_path / "sub" / "m.png", mask)
    np.testing.assert_array_equal(np.asarray(Image.open(out)), mask.astype(np.uint8) * 255)
    out = write_mask_png(tmp_path / "b.png", mask > 0)
    assert np.asarray(Image.open(out)).dtype == np.uint8


@pytest.mark.parametrize("shape", [(256, 256), (250, 301), (1, 17)])
def test_pad_crop_round_trip(shape):
    image = np.random.default_rng(0).random(shape, dtype=np.float32)
    padded, size = pad_to_multiple(image, 16)
    assert padded.shape[0] % 16 == 0 and padded.shape[1] % 16 == 0 and size == shape
    assert padded[shape[0]:].sum() == 0 and padded[:, shape[1]:].sum() == 0
    np.testing.assert_array_equal(crop_to(padded, size), image)
    np.testing.assert_array_equal(crop_to(np.stack([padded, padded]), size)[1], image)


def test_synthetic_nuclei_pairs_are_readable_deterministic_and_binary(tmp_path):
    from molml_jax.data.synthetic_nuclei import write_synthetic_nuclei

    a = write_synthetic_nuclei(tmp_path / "a", 6, size=32, seed=3, image_tag="raw", mask_tag="seg")
    b = write_synthetic_nuclei(tmp_path / "b", 6, size=32, seed=3, image_tag="raw", mask_tag="seg")
    pairs = read_image_pairs(a, image_tag="raw", mask_tag="seg")
    again = read_image_pairs(b, image_tag="raw", mask_tag="seg")
    assert pairs.images.shape == pairs.masks.shape == (6, 32, 32)
    np.testing.assert_array_equal(pairs.images, again.images)  # same seed, same pictures
    assert set(np.unique(pairs.masks)) <= {0.0, 1.0} and pairs.masks.mean() > 0.02
    # nuclei are brighter than background, on average, in every image
    for image, mask in zip(pairs.images, pairs.masks > 0.5):
        if mask.any() and (~mask).any():
            assert image[mask].mean() > image[~mask].mean() + 0.1
    other = read_image_pairs(write_synthetic_nuclei(tmp_path / "c", 6, size=32, seed=4), image_tag="img",
                             mask_tag="label")
    assert not np.array_equal(other.images, pairs.images)


def test_simulate_cli_bad_settings_one_line(tmp_path):
    import subprocess
    import sys

    from conftest import REPO

    done = subprocess.run([sys.executable, "-m", "experiments.segmentation", "simulate", "--out",
                           str(tmp_path / "s"), "--n", "2", "--size", "8"], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "size must be at least 16" in done.stderr
    from molml_jax.data.synthetic_nuclei import write_synthetic_nuclei

    with pytest.raises(ValueError, match="two different"):
        write_synthetic_nuclei(tmp_path / "t", 2, 16, image_tag="x", mask_tag="x")
    with pytest.raises(ValueError, match="at least one image"):
        write_synthetic_nuclei(tmp_path / "t", 0, 16)
    assert not (tmp_path / "s").exists() and not (tmp_path / "t").exists()  # nothing written
