"""TF-binding pipeline end to end on tiny simulated data: run folder, Pearson from moments,
vmapped sweep = sequential sweep, devices, CLI errors."""

import json
import subprocess
import sys
import time
import types

import numpy as np
import pandas as pd
import pytest

from molml_jax.errors import InputError
from molml_jax.metrics.regression import pearson_from_moments
from molml_jax.pipelines import tf_binding as tf

from conftest import REPO

TINY = dict(simulate_windows=96, simulate_length=40, batch_size=16, num_channels=8, num_blocks=1,
            epochs=3, early_stopping_patience=10)


def _config(out, **kw):
    return tf.Config(out=str(out), **{**TINY, **kw})


def test_pearson_from_moments_matches_numpy():
    rng = np.random.default_rng(0)
    p, t = rng.normal(size=(5, 7)), rng.normal(size=(5, 7))
    sums = {"bases": np.full(5, 7.0), "p": p.sum(1), "t": t.sum(1), "pp": (p * p).sum(1),
            "tt": (t * t).sum(1), "pt": (p * t).sum(1)}
    means = {k: v.mean() for k, v in sums.items()}
    assert pearson_from_moments(means)["pearson"] == pytest.approx(np.corrcoef(p.ravel(), t.ravel())[0, 1])


def test_train_run_folder_and_two_devices(tmp_path):
    one = tmp_path / "one"
    summary = tf.train_and_evaluate(_config(one), progress=False)
    for name in ("config.json", "history.csv", "summary.json", "loss_curve.png", "profile_examples.png"):
        assert (one / name).is_file(), name
    history = pd.read_csv(one / "history.csv")
    assert list(history.columns) == ["epoch", "train_loss", "val_loss", "lr", "epoch_seconds", "val_pearson"]
    assert summary["best_val_loss"] == pytest.approx(history.val_loss.min(), rel=1e-5)
    assert -1 <= summary["best_val_pearson"] <= 1
    two = tmp_path / "two"
    tf.train_and_evaluate(_config(two, devices=2), progress=False)
    cols = ["train_loss", "val_loss", "val_pearson"]
    np.testing.assert_allclose(pd.read_csv(two / "history.csv")[cols], history[cols], atol=1e-4)


def test_vmapped_sweep_equals_sequential_sweep(tmp_path):
    lrs = [1e-2, 1e-3]
    a = tf.sweep(_config(tmp_path / "v", early_stopping_patience=1), lrs, seeds=2, parallel="vmap", progress=False)
    b = tf.sweep(_config(tmp_path / "s", early_stopping_patience=1), lrs, seeds=2, parallel="sequential",
                 progress=False)
    for ra, rb in zip(a["rows"], b["rows"]):
        assert (ra["lr"], ra["seed"], ra["best_epoch"], ra["epochs_run"]) == (rb["lr"], rb["seed"], rb["best_epoch"], rb["epochs_run"])
        assert ra["best_val_loss"] == pytest.approx(rb["best_val_loss"], rel=1e-4)
        assert ra["best_val_pearson"] == pytest.approx(rb["best_val_pearson"], abs=1e-4)
    for ha, hb in zip(a["histories"], b["histories"]):  # early stopping per configuration
        assert len(ha) == len(hb)
    for name in ("sweep.csv", "sweep.md", "sweep.json", "sweep_curves.png"):
        assert (tmp_path / "v" / name).is_file()
    table = (tmp_path / "v" / "sweep.md").read_text()
    assert "| 0.01 |" in table and "±" in table
    rows = pd.read_csv(tmp_path / "v" / "sweep.csv")
    assert list(rows.columns) == ["lr", "seed", "best_val_loss", "best_val_pearson", "best_epoch", "epochs_run",
                                  "last_val_loss", "last_val_pearson"] and len(rows) == 4


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "experiments.tf_binding", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True)


def test_cli_simulate_then_train_from_files_and_bad_input(tmp_path):
    sim = tmp_path / "sim"
    proc = _cli("simulate", "--out", sim, "--windows", 40, "--length", 30, "--seed", 1)
    assert proc.returncode == 0, proc.stderr
    assert (sim / "sequences.tsv.gz").is_file() and (sim / "scores.tsv.gz").is_file()
    run = tmp_path / "run"
    proc = _cli("--sequences", sim / "sequences.tsv.gz", "--scores", sim / "scores.tsv.gz", "--epochs", 1,
                "--batch-size", 8, "--out", run, "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((run / "config.json").read_text())["pipeline"] == "tf_binding"

    bad = tmp_path / "bad_scores.tsv"
    bad.write_text("x\ty\n1\t2\n")
    for args, fragment in [
        (["--sequences", sim / "sequences.tsv.gz"], "give both --sequences and --scores"),
        (["--sequences", sim / "sequences.tsv.gz", "--scores", bad], "bad_scores.tsv"),
        (["--sequences", tmp_path / "missing.tsv.gz", "--scores", bad], "missing.tsv.gz"),
    ]:
        proc = _cli(*args, "--out", tmp_path / "never")
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and fragment in lines[0] and "Traceback" not in proc.stderr
        assert not (tmp_path / "never").exists()
    proc = _cli("sweep", "--lrs", "1e-2,abc", "--out", tmp_path / "never")
    assert proc.returncode == 2 and "comma-separated" in proc.stderr


class _RecordingWandb:
    """Stands in for the wandb module: records what a sweep logs."""

    def __init__(self):
        self.runs = []

    def init(self, **kwargs):
        run = types.SimpleNamespace(init=kwargs, logged=[], summary={}, finished=False)
        run.log = lambda values, step: run.logged.append((step, values))
        run.finish = lambda: setattr(run, "finished", True)
        self.runs.append(run)
        return run


def test_sweep_logs_config_metrics_and_summary_per_configuration(tmp_path, monkeypatch):
    fake = _RecordingWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    result = tf.sweep(_config(tmp_path / "s", epochs=2), [1e-2, 1e-3], parallel="sequential", progress=False,
                      wandb=True)
    assert [run.init["config"]["lr"] for run in fake.runs] == [1e-2, 1e-3]
    for run, row, history in zip(fake.runs, result["rows"], result["histories"]):
        assert run.finished and run.init["mode"] == "offline" and run.init["dir"] == str(tmp_path / "s")
        assert run.init["config"]["simulate_windows"] == TINY["simulate_windows"]
        assert [step for step, _ in run.logged] == [r["epoch"] for r in history] == [1, 2]
        assert run.logged[-1][1]["val_loss"] == history[-1]["val_loss"] and "val_pearson" in run.logged[0][1]
        assert run.summary["best_val_loss"] == row["best_val_loss"]


def test_sweep_with_real_wandb_offline_writes_one_run_per_configuration(tmp_path, monkeypatch):
    pytest.importorskip("wandb")  # installed by the test extra
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_MODE", raising=False)  # offline is the default: no network, no account
    out = tmp_path / "sweep"
    tf.sweep(_config(out, epochs=2), [1e-2, 1e-3], parallel="sequential", progress=False, wandb=True)
    runs = sorted((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 2
    for run in runs:
        (records,) = run.glob("run-*.wandb")
        # wandb's service process writes the records; on a loaded machine it may still be
        # flushing when finish() returns, so wait for it (bounded)
        deadline = time.monotonic() + 30
        while records.stat().st_size <= 1000 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert records.stat().st_size > 1000  # config, 2 history rows and the summary


def test_wandb_missing_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    with pytest.raises(InputError, match=r"--wandb needs the wandb package"):
        tf.sweep(_config(tmp_path / "s", epochs=1), [1e-2], parallel="sequential", progress=False, wandb=True)
    assert not (tmp_path / "s").exists()  # refused before anything was trained or written


def test_predict_writes_the_study_format_that_round_trips_as_scores(tmp_path):
    from molml_jax.data.tf_binding import read_tf_binding, simulate_tf_binding, write_tf_binding

    run = tmp_path / "run"
    tf.train_and_evaluate(_config(run, epochs=2), progress=False)
    names, sequences, truth, _ = simulate_tf_binding(6, 40, seed=7, motifs=["CTCF"])
    held_out = tmp_path / "held_out"
    held_out.mkdir()
    write_tf_binding(held_out / "seq.tsv.gz", held_out / "true.tsv.gz", names, sequences, truth)
    result = tf.predict(run, held_out / "seq.tsv.gz", tmp_path / "pred.tsv.gz")
    assert result == {"n": 6, "length": 40, "output": str(tmp_path / "pred.tsv.gz")}
    table = pd.read_csv(tmp_path / "pred.tsv.gz", sep="\t")
    assert list(table.columns) == names and len(table) == 40  # one column per window, one row per base
    back = read_tf_binding(held_out / "seq.tsv.gz", tmp_path / "pred.tsv.gz")  # fed back as --scores
    direct = tf.predict_arrays(run, back.x)
    np.testing.assert_allclose(back.y, direct, rtol=1e-5, atol=1e-5)  # %.6g in the file
    itself = tf.evaluate(run, held_out / "seq.tsv.gz", tmp_path / "pred.tsv.gz")
    assert itself["pearson"] == pytest.approx(1.0, abs=1e-6) and itself["mse"] < 1e-8
    against_truth = tf.evaluate(run, held_out / "seq.tsv.gz", held_out / "true.tsv.gz")
    assert against_truth["pearson"] == pytest.approx(np.corrcoef(direct.ravel(), truth.ravel())[0, 1], abs=1e-5)

    # FASTA in: ids name the columns; the CLI prints what it wrote
    fasta = tmp_path / "w.fa"
    fasta.write_text("".join(f">{n} some description\n{s}\n" for n, s in zip(names[:2], sequences[:2])))
    proc = _cli("predict", "--checkpoint", run, "--input", fasta, "--output", tmp_path / "fa.tsv")
    assert proc.returncode == 0, proc.stderr
    assert list(pd.read_csv(tmp_path / "fa.tsv", sep="\t").columns) == names[:2]
    proc = _cli("evaluate", "--checkpoint", run, "--input", held_out / "seq.tsv.gz", "--scores", held_out / "true.tsv.gz")
    assert proc.returncode == 0 and f"Pearson R {against_truth['pearson']:.4f}" in proc.stdout

    # windows of another length than training: one clear line, nothing written
    short = tmp_path / "short.fa"
    short.write_text(">a\nACGTACGTAC\n")
    proc = _cli("predict", "--checkpoint", run, "--input", short, "--output", tmp_path / "never.tsv")
    assert proc.returncode == 2 and "windows are 10 bp, but the model" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "never.tsv").exists()
    with pytest.raises(InputError, match="windows of 10 bp, but the model was trained on 40 bp"):
        tf.predict_arrays(run, np.zeros((1, 10, 4)))
