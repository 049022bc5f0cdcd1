"""Segmentation pipeline end to end on tiny synthetic image/mask pairs with other tags."""

import subprocess
import sys

import numpy as np
from PIL import Image

from molml_jax.pipelines import segmentation as seg

from conftest import REPO


def _config(data, out, **kw):
    settings = dict(data=str(data), image_tag="raw", mask_tag="label", out=str(out), epochs=2,
                    batch_size=4, num_kernel=2)
    settings.update(kw)
    return seg.Config(**settings)


def test_train_run_folder_two_devices_and_predict(pairs_dir, tmp_path):
    one = tmp_path / "one"
    summary = seg.train_and_evaluate(_config(pairs_dir, one), progress=False)
    for name in ("config.json", "history.csv", "summary.json", "loss_curve.png", "segmentation_examples.png"):
        assert (one / name).is_file(), name
    for key in ("test_dice", "test_iou", "test_map"):
        assert 0.0 <= summary[key] <= 1.0
    assert summary["n_train"] + summary["n_val"] + summary["n_test"] == 20
    two = tmp_path / "two"
    seg.train_and_evaluate(_config(pairs_dir, two, devices=2), progress=False)
    h1 = np.loadtxt(one / "history.csv", delimiter=",", skiprows=1)
    h2 = np.loadtxt(two / "history.csv", delimiter=",", skiprows=1)
    np.testing.assert_allclose(h1[:, [1, 2]], h2[:, [1, 2]], atol=1e-4)  # train and validation loss

    # predict: any size (padded to 16 and cropped back), one 0/255 PNG per image, same stem
    odd = tmp_path / "odd"
    odd.mkdir()
    Image.fromarray((np.random.default_rng(1).random((37, 50)) * 255).astype(np.uint8)).save(odd / "cellA.png")
    out = tmp_path / "masks"
    assert seg.predict(one, odd, out)["n"] == 1
    mask = np.asarray(Image.open(out / "cellA.png"))
    assert mask.shape == (37, 50) and set(np.unique(mask)) <= {0, 255}


def test_cli_errors_one_line_exit_2(pairs_dir, tmp_path):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "experiments.segmentation", *map(str, args)], cwd=REPO,
                              capture_output=True, text=True)

    corrupt = tmp_path / "bad.tar.gz"
    corrupt.write_bytes(b"not a tarball")
    for args, fragment in [
        (["--data", tmp_path / "nowhere"], "nowhere"),
        (["--data", corrupt], "bad.tar.gz"),
        (["--data", pairs_dir], "no"),  # default tags find no cells/masks pairs here
    ]:
        proc = cli(*args, "--out", tmp_path / "never")
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert lines[-1].startswith("error: ") and fragment in lines[-1] and "Traceback" not in proc.stderr
        assert not (tmp_path / "never").exists()
    proc = cli("predict", "--checkpoint", tmp_path / "missing_run", "--input", pairs_dir, "--output", tmp_path / "o")
    assert proc.returncode == 2 and "no such run folder" in proc.stderr
