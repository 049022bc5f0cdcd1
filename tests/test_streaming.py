"""Streamed training (--stream): the same history as the splits kept on the devices, from a
prepared dataset and from in-memory arrays; the automatic choice and what it says; exact
resume; what cannot stream."""

import json

import numpy as np
import pandas as pd
import pytest

from molml_jax.pipelines import common, dna, tf_binding

from conftest import run_launcher

HISTORY = ["epoch", "train_loss", "val_loss", "lr"]


def _history(run):
    table = pd.read_csv(run / "history.csv")
    return table[HISTORY + [c for c in table.columns if c.startswith("val_") and c != "val_loss"]].to_numpy()


def test_streamed_prepared_dataset_trains_as_the_splits_on_the_devices(tmp_path, capsys):
    data_dir = tmp_path / "data"
    result = run_launcher("tf_binding", "prepare", "--out", data_dir, "--simulate-windows", 60,
                          "--simulate-length", 40, "--seed", 2, capsys=capsys)
    assert result.returncode == 0, result.stderr
    tiny = ["--data", data_dir, "--epochs", 2, "--num-channels", 4, "--num-blocks", 1, "--batch-size", 16, "--devices", 2]
    runs = {}
    for flag in ("--stream", "--no-stream"):
        runs[flag] = tmp_path / flag.strip("-")
        result = run_launcher("tf_binding", "train", *tiny, flag, "--out", runs[flag], capsys=capsys)
        assert result.returncode == 0, result.stderr
        said = [line for line in result.stderr.splitlines() if line.startswith("data: ")]
        assert len(said) == 1 and f"{flag}: " in said[0]
        assert said[0].endswith("streaming batches from the host" if flag == "--stream" else "kept on the devices")
        assert json.loads((runs[flag] / "summary.json").read_text())["streamed"] is (flag == "--stream")
    np.testing.assert_allclose(_history(runs["--stream"]), _history(runs["--no-stream"]), rtol=1e-5, atol=1e-6)


def test_streamed_run_resumes_exactly(tiny_dna_csv, tmp_path, capsys):
    """Epochs restart from their first batch: a run stopped after epoch 2 and resumed to 3
    equals a run of 3 (in-memory arrays streamed; the BiLSTM on the loop driver)."""
    tiny = ["--data", tiny_dna_csv, "--hidden-dim", 4, "--batch-size", 32, "--checkpoint-every", 1, "--stream", "--quiet"]
    for epochs in (2, 3):
        assert run_launcher("dna", "train", *tiny, "--epochs", epochs, "--out", tmp_path / "resumed",
                            capsys=capsys).returncode == 0
    assert run_launcher("dna", "train", *tiny, "--epochs", 3, "--out", tmp_path / "straight",
                        capsys=capsys).returncode == 0
    assert json.loads((tmp_path / "resumed" / "summary.json").read_text())["resumed_from_epoch"] == 2
    np.testing.assert_array_equal(_history(tmp_path / "resumed"), _history(tmp_path / "straight"))


def test_automatic_choice_compares_the_splits_with_the_memory_budget(tiny_dna_csv, monkeypatch):
    data = dna.load_data(dna.Config(data=str(tiny_dna_csv)))
    sizes = common.split_bytes(data)
    n = sum(len(index) for index in data.split.values())
    assert sum(sizes.values()) == n * (24 * 4 * 4 + 4)  # one-hot float32 (24, 4) and a float32 label
    monkeypatch.setattr(common, "device_memory", lambda: (10**9, "test memory"))
    assert common.choose_streaming(None, data) == (
        False, "data: 0.00 GB of splits fit in 50% of 1.00 GB test memory: kept on the devices")
    monkeypatch.setattr(common, "device_memory", lambda: (2 * sum(sizes.values()) - 2, "test memory"))
    stream, said = common.choose_streaming(None, data)
    assert stream and said.endswith("exceed 50% of 0.00 GB test memory: streaming batches from the host")
    assert common.choose_streaming(False, data) == (False, "data: 0.00 GB of splits, --no-stream: kept on the devices")


@pytest.mark.parametrize("args, words", [
    (["train", "--stream", "--driver", "scan"], "the scan driver keeps a whole epoch's data on the devices"),
    (["sweep", "--stream", "--lrs", "1e-2"], "sweep: --stream trains one run at a time"),
])
def test_what_cannot_stream_is_one_line(tiny_dna_csv, tmp_path, capsys, args, words):
    result = run_launcher("dna", *args, "--data", tiny_dna_csv, "--epochs", 1, "--out", tmp_path / "run", capsys=capsys)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and words in result.stderr
    assert not (tmp_path / "run").exists()


def test_split_bytes_of_a_prepared_dataset_reads_one_example(tmp_path):
    out = tmp_path / "data"
    tf_binding.prepare(tf_binding.Config(simulate_windows=30, simulate_length=40), out)
    data = tf_binding.load_data(tf_binding.Config(data=str(out)))
    assert common.split_bytes(data) == {"train": 24 * (40 * 4 * 4 + 40 * 4), "val": 6 * (40 * 4 * 4 + 40 * 4)}
