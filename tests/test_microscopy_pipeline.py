"""Segmentation on real microscopy through the pipeline and its command line: folders named
tag-first and pairs tables, bit depths and the stored normalisation, tiled prediction,
instances and objects.csv, evaluate's instance metrics, and the bad-input paths."""

import json

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from molml_jax.data.instances import label_instances
from molml_jax.errors import InputError
from molml_jax.pipelines import segmentation as seg

from conftest import run_launcher

TINY = ["--epochs", "1", "--batch-size", "4", "--num-kernel", "2", "--rotation", "0"]


def _discs(n, size=32, seed=0):
    """n (image uint8, mask uint8 0/255) pairs of one or two bright discs on a noisy background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    pairs = []
    for _ in range(n):
        mask = np.zeros((size, size), bool)
        for _ in range(rng.integers(1, 3)):
            cy, cx, r = rng.integers(6, size - 6, 2).tolist() + [int(rng.integers(3, 6))]
            mask |= (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        image = np.clip(mask * 150 + rng.normal(40, 10, mask.shape), 0, 255).astype(np.uint8)
        pairs.append((image, mask.astype(np.uint8) * 255))
    return pairs


def _write_prefixed(folder, pairs):
    """bubbles_{i}.png with masks_{i}.png: the tag first."""
    folder.mkdir(parents=True)
    for i, (image, mask) in enumerate(pairs):
        Image.fromarray(image).save(folder / f"bubbles_{i}.png")
        Image.fromarray(mask).save(folder / f"masks_{i}.png")
    return folder


@pytest.fixture(scope="module")
def percentile_run(tmp_path_factory):
    """A tiny U-Net trained from the command line with --normalize percentile on a folder
    named tag-first (bubbles_{i}.png with masks_{i}.png)."""
    import contextlib
    import io

    from experiments import segmentation as launcher

    root = tmp_path_factory.mktemp("percentile")
    data = _write_prefixed(root / "data", _discs(16))
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        launcher.main(["train", "--data", str(data), "--image-tag", "bubbles", "--mask-tag", "masks", "--normalize",
                       "percentile", "--epochs", "2", "--batch-size", "4", "--num-kernel", "2", "--rotation", "0",
                       "--out", str(root / "run"), "--quiet"])
    return root / "run"


def test_tag_first_folder_trained_from_the_command_line(percentile_run):
    summary = json.loads((percentile_run / "summary.json").read_text())
    assert summary["n_train"] + summary["n_val"] + summary["n_test"] == 16 and summary["epochs_run"] == 2
    stored = json.loads((percentile_run / "config.json").read_text())
    assert (stored["image_tag"], stored["mask_tag"], stored["normalize"]) == ("bubbles", "masks", "percentile")


def test_pairs_table_trains_from_the_command_line(tmp_path, capsys):
    pairs = _discs(12, seed=1)
    data = _write_prefixed(tmp_path / "prefixed", pairs)
    # a table naming files in sub-folders, under other names, images as 16-bit TIFF
    (tmp_path / "raw" / "day1").mkdir(parents=True)
    (tmp_path / "gt").mkdir()
    rows = []
    for i, (image, mask) in enumerate(pairs):
        tifffile.imwrite(tmp_path / "raw" / "day1" / f"field{i}.tif", image.astype(np.uint16) * 16)
        Image.fromarray(mask).save(tmp_path / "gt" / f"nuclei-{i}.png")
        rows.append({"image": f"raw/day1/field{i}.tif", "mask": f"gt/nuclei-{i}.png"})
    pd.DataFrame(rows).to_csv(tmp_path / "pairs.csv", index=False)
    result = run_launcher("segmentation", "train", "--pairs", tmp_path / "pairs.csv", "--normalize", "percentile",
                          *TINY, "--out", tmp_path / "run_table", "--quiet", capsys=capsys)
    assert result.returncode == 0, result.stderr
    stored = json.loads((tmp_path / "run_table" / "config.json").read_text())
    assert stored["pixel_kind"] == "uint16" and stored["normalize"] == "percentile"
    assert stored["pairs"] == str((tmp_path / "pairs.csv").resolve())
    # the same pairs through either reader: the same split and the same arrays
    a = seg.load_data(seg.Config(data=str(data), image_tag="bubbles", mask_tag="masks", normalize="percentile"))
    b = seg.load_data(seg.Config(pairs=str(tmp_path / "pairs.csv"), normalize="percentile"))
    np.testing.assert_allclose(a.images, b.images, atol=1e-6)
    np.testing.assert_array_equal(a.masks, b.masks)


def test_percentile_model_gives_the_same_mask_for_8_and_16_bit(percentile_run, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i, (image, _) in enumerate(_discs(3, size=48, seed=5)):
        Image.fromarray(image).save(images / f"a{i}.png")
        tifffile.imwrite(images / f"b{i}.tif", image.astype(np.uint16) * 16)  # a 12-bit camera's range
    result = seg.predict(percentile_run, images, tmp_path / "out")
    assert result["n"] == 6
    for i in range(3):
        eight = np.asarray(Image.open(tmp_path / "out" / f"a{i}.png"))
        sixteen = np.asarray(Image.open(tmp_path / "out" / f"b{i}.tif".replace(".tif", ".png")))
        np.testing.assert_array_equal(eight, sixteen)


def test_scale_model_refuses_16_bit_images(percentile_run, tmp_path, capsys):
    """A model trained on 8-bit images with the /255 rule: its config.json says so (the same
    weights, the rule changed in a copy of the run folder: predict applies the stored rule)."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(percentile_run, run)
    stored = json.loads((run / "config.json").read_text())
    assert stored["pixel_kind"] == "uint8"
    (run / "config.json").write_text(json.dumps({**stored, "normalize": "scale"}))
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(images / "a.png")
    tifffile.imwrite(images / "b.tif", np.full((32, 32), 4000, np.uint16))
    result = run_launcher("segmentation", "predict", "--checkpoint", run, "--input", images, "--output",
                          tmp_path / "out", capsys=capsys)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "b.tif" in result.stderr and "16-bit" in result.stderr and "--normalize percentile" in result.stderr
    assert not (tmp_path / "out").exists()  # a.png was predicted, but nothing is written


def test_predict_instances_writes_labels_and_objects(percentile_run, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    for i, (image, _) in enumerate(_discs(2, size=64, seed=9)):
        Image.fromarray(image).save(images / f"img{i}.png")
    out = tmp_path / "out"
    result = run_launcher("segmentation", "predict", "--checkpoint", percentile_run, "--input", images, "--output",
                          out, "--instances", "--tile", "32", "--overlap", "16", capsys=capsys)
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(out / "objects.csv")
    assert list(table.columns[:3]) == ["image", "label", "area"]
    for i in range(2):
        mask = np.asarray(Image.open(out / f"img{i}.png")) > 0
        labels = tifffile.imread(out / f"img{i}_labels.tif")
        assert labels.dtype == np.uint16 and labels.shape == (64, 64)
        np.testing.assert_array_equal(labels, label_instances(mask))  # the mask's objects
        rows = table[table["image"] == f"img{i}"]
        assert len(rows) == labels.max() and rows["area"].sum() == mask.sum()
    assert f"{len(table)} objects" in result.stdout


def test_tiled_prediction_equals_whole_image_when_one_tile_covers_it(percentile_run):
    image = np.random.default_rng(0).random((100, 75)).astype(np.float32)
    whole = seg.predict_arrays(percentile_run, image)
    np.testing.assert_allclose(seg.predict_arrays(percentile_run, image, tile=112), whole, atol=1e-6)
    # tiles (tests/test_tiles.py: equal away from the seams) and the 8 flips and rotations
    tiled = seg.predict_arrays(percentile_run, image, tile=64, overlap=32, tta=True)
    assert tiled.shape == whole.shape and not np.allclose(tiled, whole) and np.abs(tiled - whole).max() < 0.5


def test_evaluate_writes_dice_iou_and_instance_metrics(percentile_run, tmp_path, capsys):
    data = _write_prefixed(tmp_path / "eval", _discs(4, seed=3))
    out = tmp_path / "metrics.json"
    result = run_launcher("segmentation", "evaluate", "--checkpoint", percentile_run, "--data", data, "--image-tag",
                          "bubbles", "--mask-tag", "masks", "--output", out, capsys=capsys)
    assert result.returncode == 0, result.stderr
    record = json.loads(out.read_text())
    assert record["n_images"] == 4 and len(record["per_image"]) == 4
    assert record["instances"]["thresholds"][0] == 0.5 and len(record["instances"]["f1"]) == 10
    assert record["true_objects"] == sum(label_instances(np.asarray(Image.open(p)) > 127).max()
                                         for p in sorted(data.glob("masks_*.png")))
    assert record["dice"] == pytest.approx(np.mean([r["dice"] for r in record["per_image"]]))
    assert "at IoU 0.5: precision" in result.stdout
    # --split test: the run's own test split, as summary.json measured it
    split = seg.evaluate(percentile_run, split="test", output=tmp_path / "split.json")
    summary = json.loads((percentile_run / "summary.json").read_text())
    assert split["n_images"] == summary["n_test"]
    assert split["dice"] == pytest.approx(summary["test_dice"], abs=1e-4)
    assert split["iou"] == pytest.approx(summary["test_iou"], abs=1e-4)
    assert split["dsb_map"] == pytest.approx(summary["test_map"], abs=1e-4)


def test_label_image_masks_are_instances_for_evaluation(percentile_run, tmp_path):
    folder = tmp_path / "labelled"
    folder.mkdir()
    labels = np.zeros((32, 32), np.uint16)
    labels[4:12, 4:12] = 1
    labels[4:12, 12:20] = 2  # touching the first: one component, two objects
    Image.fromarray(np.where(labels > 0, 200, 30).astype(np.uint8)).save(folder / "x_cells.png")
    tifffile.imwrite(folder / "x_masks.tif", labels)
    record = seg.evaluate(percentile_run, folder, output=tmp_path / "m.json")
    assert record["true_objects"] == 2


@pytest.mark.parametrize("flags, fragment", [
    (["--tile", "8"], "smaller than the network's minimum"),
    (["--tile", "100"], "multiple of 16"),
    (["--tile", "64", "--overlap", "64"], "--overlap 64 must be smaller than --tile 64"),
])
def test_bad_tiling_is_one_line(percentile_run, tmp_path, capsys, flags, fragment):
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(image)
    result = run_launcher("segmentation", "predict", "--checkpoint", percentile_run, "--input", image, "--output",
                          tmp_path / "out", *flags, capsys=capsys)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and fragment in result.stderr
    assert not (tmp_path / "out").exists()


def test_bad_channel_pairs_and_sizes_are_one_line(percentile_run, tmp_path, capsys):
    # an image with fewer channels than --channel asks for (prediction uses the run's channel)
    two = tmp_path / "two"
    two.mkdir()
    tifffile.imwrite(two / "c_cells.tif", np.zeros((2, 32, 32), np.uint16))
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(two / "c_masks.png")
    result = run_launcher("segmentation", "train", "--data", two, "--channel", "2", "--normalize", "percentile",
                          *TINY, "--out", tmp_path / "never", capsys=capsys)
    assert result.returncode == 2 and "--channel 2 is out of range" in result.stderr
    # a table naming a missing file; a mask whose size differs from its image
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "i.png")
    Image.fromarray(np.zeros((16, 32), np.uint8)).save(tmp_path / "m.png")
    (tmp_path / "missing.csv").write_text("image,mask\ni.png,m.png\nnope.png,m.png\n")
    (tmp_path / "sizes.csv").write_text("image,mask\ni.png,m.png\n")
    for table, fragment in (("missing.csv", "line 3: nope.png: no such file"), ("sizes.csv", "32x32")):
        result = run_launcher("segmentation", "train", "--pairs", tmp_path / table, *TINY, "--out",
                              tmp_path / "never", capsys=capsys)
        assert result.returncode == 2 and result.stderr.count("\n") == 1 and fragment in result.stderr, result.stderr
    assert not (tmp_path / "never").exists()
    with pytest.raises(InputError, match="give --data or --pairs, not both"):
        seg.load_data(seg.Config(data=str(two), pairs=str(tmp_path / "sizes.csv")))
