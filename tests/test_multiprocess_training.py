"""Training across processes: two local processes (experiments.launch, gloo on CPU) give the
history of one process with two devices, and of one device; only process 0 writes the run
folder; the checkpoints they saved together restore in one process (predict).

The launcher's workers are fresh subprocesses (jax.distributed must start before JAX);
the one-process runs are in this process (conftest forces two CPU devices).
"""

import os
import subprocess
import sys

import numpy as np
import pandas as pd

from conftest import REPO, run_launcher

TRAIN = ["--epochs", "3", "--hidden-dim", "4", "--batch-size", "32", "--checkpoint-every", "1", "--quiet"]


def test_two_processes_train_as_one_process_with_two_devices_and_as_one_device(tiny_dna_csv, tmp_path, capsys):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("XLA_FLAGS", None)  # one device per process: the launcher sets what a worker sees
    two = tmp_path / "two_processes"
    job = subprocess.run(
        [sys.executable, "-m", "experiments.launch", "--processes", "2", "--timeout-seconds", "240", "--",
         "experiments.dna", "train", "--data", tiny_dna_csv, "--out", two, *TRAIN],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert job.returncode == 0, job.stderr[-2000:]
    assert job.stdout.count('"best_val_loss"') == 1  # the summary, printed by process 0 only
    histories = {"two processes": pd.read_csv(two / "history.csv")}
    for devices in (2, 1):
        out = tmp_path / f"one_process_{devices}"
        result = run_launcher("dna", "train", "--data", tiny_dna_csv, "--out", out, "--devices", devices, *TRAIN,
                              capsys=capsys)
        assert result.returncode == 0, result.stderr
        histories[f"{devices} device(s)"] = pd.read_csv(out / "history.csv")
    columns = ["train_loss", "val_loss", "lr", "val_accuracy"]
    reference = histories.pop("two processes")[columns].to_numpy()
    assert len(reference) == 3
    for name, history in histories.items():
        np.testing.assert_allclose(history[columns].to_numpy(), reference, rtol=1e-5, atol=1e-7, err_msg=name)

    # one run folder, written by process 0: no temporary or per-process leftovers
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in (tmp_path / "one_process_2").iterdir())
    config = pd.read_json(two / "config.json", typ="series")
    assert "coordinator" not in config and "num_processes" not in config
    assert pd.read_json(two / "summary.json", typ="series")["processes"] == 2

    # the checkpoints two processes saved restore in one
    predicted = tmp_path / "p.csv"
    result = run_launcher("dna", "predict", "--checkpoint", two, "--input", tiny_dna_csv, "--output", predicted,
                          capsys=capsys)
    assert result.returncode == 0, result.stderr
    one = tmp_path / "p1.csv"
    run_launcher("dna", "predict", "--checkpoint", tmp_path / "one_process_2", "--input", tiny_dna_csv,
                 "--output", one, capsys=capsys)
    np.testing.assert_allclose(pd.read_csv(predicted)["probability"], pd.read_csv(one)["probability"], atol=1e-5)
