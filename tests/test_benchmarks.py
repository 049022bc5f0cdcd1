"""The benchmark suite and the many-seed comparison: statistics, device selection, reports,
and every bad-input path (one line, exit status 2)."""

from __future__ import annotations

import json
import math

import pytest

from benchmarks import seed_stats, suite, torch_device
from molml_jax.errors import InputError


# ----- statistics ---------------------------------------------------------------------------

def test_spread_and_mann_whitney_against_hand_computed_values():
    s = seed_stats.spread([0.5, 0.7, 0.9])
    assert (s["n"], s["mean"], s["min"], s["max"], s["median"]) == (3, pytest.approx(0.7), 0.5, 0.9, 0.7)
    assert s["sd"] == pytest.approx(0.2)  # sample sd: sqrt((0.04 + 0 + 0.04) / 2)
    # fully separated samples of 3 and 3: the exact two-sided p is 2 / C(6, 3) = 0.1
    assert seed_stats.mann_whitney_p([1, 2, 3], [4, 5, 6]) == pytest.approx(0.1)
    assert seed_stats.mann_whitney_p([4, 5, 6], [1, 2, 3]) == pytest.approx(0.1)
    assert seed_stats.mann_whitney_p([1, 4, 5], [2, 3, 6]) == pytest.approx(1.0)  # U = 4.5 of 9: the middle
    assert seed_stats.mann_whitney_p([0.9, 0.9], [0.9, 0.9]) == 1.0  # all tied: no evidence of a difference
    assert seed_stats.spread([0.3])["sd"] == 0.0
    with pytest.raises(ValueError):
        seed_stats.spread([])


def test_left_plateau_epoch_is_the_first_epoch_under_the_threshold():
    history = [{"epoch": e, "val_loss": v} for e, v in enumerate([0.70, 0.69, 0.62, 0.55, 0.40], start=1)]
    assert seed_stats.left_plateau_epoch(history) == 4
    assert seed_stats.left_plateau_epoch(history[:3]) is None
    assert seed_stats.CHANCE_LOSS == pytest.approx(math.log(2))


# ----- devices ------------------------------------------------------------------------------

def test_torch_device_resolution_and_a_missing_cuda_is_one_clear_error():
    import torch

    assert torch_device.resolve_torch_device("cpu").type == "cpu"
    assert torch_device.resolve_torch_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(InputError, match="must be one of auto, cpu, cuda"):
        torch_device.resolve_torch_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="--torch-device cuda: torch .* sees no CUDA device"):
            torch_device.resolve_torch_device("cuda")
    torch_device.synchronize("cpu")  # a no-op on the CPU, never an error


def test_torch_plan_follows_the_jax_backend_and_says_why_not(monkeypatch):
    import torch

    assert suite.torch_plan("auto", "cpu") == ("cpu", None)
    device, reason = suite.torch_plan("auto", "tpu")
    assert device is None and "no tpu device" in reason
    if not torch.cuda.is_available():
        device, reason = suite.torch_plan("auto", "gpu")
        assert device is None and "sees no CUDA device" in reason
    monkeypatch.setattr(suite, "torch_unavailable_reason", lambda: "torch is not installed (test)")
    assert suite.torch_plan("auto", "cpu") == (None, "torch is not installed (test)")


# ----- command lines: bad input -------------------------------------------------------------

def _one_line_exit_2(capsys, main, argv, *fragments):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0], err
    for fragment in fragments:
        assert fragment in err[0], err[0]


def test_suite_bad_input_is_one_line(capsys, tmp_path):
    import torch

    _one_line_exit_2(capsys, suite.main, ["--pipelines", "dna,proteins"], "unknown pipeline 'proteins'",
                     "dna, tf_binding, segmentation")
    _one_line_exit_2(capsys, suite.main, ["--seeds", "0"], "--seeds")
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    _one_line_exit_2(capsys, suite.main, ["--quick", "--out", str(blocker / "out")], str(blocker / "out"),
                     "cannot write results there")
    if not torch.cuda.is_available():
        _one_line_exit_2(capsys, suite.main, ["--quick", "--torch-device", "cuda", "--out", str(tmp_path / "o")],
                         "--torch-device cuda", "sees no CUDA device")
    assert not (tmp_path / "o" / "report.md").exists()


def test_dna_vs_torch_seeds_argument():
    from benchmarks.dna_vs_torch import parse_seeds

    assert parse_seeds("0-15") == list(range(16))
    assert parse_seeds("3") == [3]
    assert parse_seeds("4,5,6") == [4, 5, 6]
    for bad in ("0,2", "5-3", "a-b", ""):
        with pytest.raises(Exception, match="expected"):
            parse_seeds(bad)


# ----- runs ---------------------------------------------------------------------------------

def test_dna_seeds_both_frameworks_same_batches_report_and_bands(tiny_dna_csv, tmp_path):
    """Two seeds of each framework on a tiny file: per-seed AUCs, the plateau fraction, the
    p-value, the band plot; the PyTorch runs replay the JAX sweep's batches."""
    from benchmarks.dna_vs_torch import run_seeds

    result = run_seeds(2, [0, 1], data=str(tiny_dna_csv), results_dir=tmp_path, progress=False)
    j, t = result["jax"], result["torch"]
    assert [r["seed"] for r in j["runs"]] == [0, 1] == [r["seed"] for r in t["runs"]]
    for run in j["runs"] + t["runs"]:
        assert 0.0 <= run["test_auc"] <= 1.0 and len(run["history"]) == 2
    assert result["test_auc"]["jax"]["n"] == 2 and 0.0 < result["test_auc"]["p_value"] <= 1.0
    assert j["runs"][0]["test_auc"] != j["runs"][1]["test_auc"]  # seeds differ in their initial weights
    assert 0.0 <= j["left_plateau_fraction"] <= 1.0 and t["device"] == "cpu"
    md = (tmp_path / "dna_seeds.md").read_text()
    assert "Mann-Whitney" in md and "| 1 |" in md and "left the 0.693 plateau" in md
    assert json.loads((tmp_path / "dna_seeds.json").read_text())["seeds"] == [0, 1]
    assert (tmp_path / "dna_seeds_bands.png").stat().st_size > 10_000


def test_suite_without_torch_runs_jax_and_says_why(monkeypatch, tmp_path):
    monkeypatch.setattr(suite, "torch_unavailable_reason", lambda: "torch is not installed (test)")
    report = suite.run_suite(["tf_binding"], quick=True, seeds=1, out=tmp_path, epochs=1, progress=False)
    case = report["cases"]["tf_binding"]
    assert case["torch"] == {"not_run": "torch is not installed (test)"} and "ratio_torch_over_jax" not in case
    assert -1.0 <= case["jax"]["values"][0] <= 1.0
    md = (tmp_path / "report.md").read_text()
    assert "| tf_binding | validation Pearson R (best epoch) |" in md and "| not run |" in md
    assert "PyTorch not run: torch is not installed (test)" in md
    assert (tmp_path / "tf_binding_loss_curves.png").is_file()


@pytest.mark.slow
def test_quick_suite_writes_one_report_with_every_pipeline_and_both_frameworks(tmp_path, capsys):
    suite.main(["--quick", "--out", str(tmp_path)])
    report = json.loads((tmp_path / "report.json").read_text())
    assert list(report["cases"]) == list(suite.PIPELINES) and report["mode"] == "quick"
    for name, case in report["cases"].items():
        j, t = case["jax"], case["torch"]
        assert 0.0 < j["median_epoch_seconds"] and 0.0 < t["median_epoch_seconds"], name
        assert case["ratio_torch_over_jax"] == pytest.approx(t["median_epoch_seconds"] / j["median_epoch_seconds"])
        assert j["compile_seconds"] is not None and j["device"].startswith("cpu") and t["device"] == "cpu"
        assert (tmp_path / f"{name}_loss_curves.png").stat().st_size > 10_000
    for key in ("backend", "device_kind", "jax_version", "jaxlib_version", "torch_version", "cpu", "cpu_count"):
        assert report["machine"][key], key
    md = (tmp_path / "report.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith(("| dna |", "| tf_binding |", "| segmentation |"))]
    assert len(rows) == 3 and all("not run" not in row and "x** |" in row for row in rows), rows
    assert "## Machine" in md and "[suite" in capsys.readouterr().err  # progress was shown


def test_gpu_goals_are_checked_from_the_measured_epoch_times():
    cases = {"dna": {"jax": {"median_epoch_seconds": 0.05}},
             "segmentation": {"jax": {"median_epoch_seconds": 0.2}, "ratio_torch_over_jax": 2.5},
             "tf_binding": {"jax": {"median_epoch_seconds": 0.0252}, "steps_per_epoch": 63}}
    rows = {row["goal"]: row for row in suite.goals(cases)}
    assert rows["500 BiLSTM epochs in <= 30 s"]["value"] == pytest.approx(25.0) and rows["500 BiLSTM epochs in <= 30 s"]["met"]
    assert rows["20 U-Net epochs in <= 3 s"]["value"] == pytest.approx(4.0) and not rows["20 U-Net epochs in <= 3 s"]["met"]
    assert rows["CNN <= 0.5 ms per step"]["value"] == pytest.approx(0.4) and rows["CNN <= 0.5 ms per step"]["met"]
    assert rows["U-Net JAX >= 2x PyTorch per epoch"]["met"]
    assert [r["goal"] for r in suite.goals({"dna": cases["dna"]})] == ["500 BiLSTM epochs in <= 30 s"]


def test_the_package_and_the_suite_import_with_only_the_accelerator_image_stack():
    """The GPU image has jax, flax, optax, orbax, torch, pandas, scikit-learn and matplotlib:
    no tqdm, wandb, tensorflow-datasets, grain, psutil, tifffile or scikit-image. Everything the suite needs imports
    without them, and a pipeline loads its files and places its splits."""
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('tqdm', 'wandb', 'tensorflow_datasets', 'grain', 'psutil', 'tifffile',\n"
        "                                  'skimage'):\n"
        "            raise ImportError(f'No module named {name!r} (hidden by the test)')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import benchmarks.suite, benchmarks.dna_vs_torch, benchmarks.sweep_parallel, experiments.dna\n"
        "from molml_jax.pipelines import dna, segmentation, tf_binding\n"
        "from molml_jax.progress import progress_bar\n"
        "assert 'tqdm' not in sys.modules and progress_bar.__module__ == 'molml_jax.progress'\n"
        "bar = progress_bar(total=2, desc='run', unit='epoch')\n"
        "bar.set_postfix(loss='0.5'); bar.update(1); bar.close()\n"
        "from molml_jax.pipelines import common\n"
        "streaming, said = common.choose_streaming(None, dna.load_data(dna.Config()))\n"
        "assert not streaming and said.endswith('kept on the devices'), said\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "run: 1/2 epoch (loss=0.5)" in proc.stderr
