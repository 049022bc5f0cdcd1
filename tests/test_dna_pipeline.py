"""End to end on a tiny file in a temp folder: run folder, determinism, resume, predict,
and every bad-input path of the command line."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from molml_jax.errors import InputError, TrainingDiverged
from molml_jax.pipelines import dna

from conftest import motif_sequences, run_launcher

LOSSES = ["epoch", "train_loss", "val_loss", "lr", "val_accuracy"]


def _config(data, out, **kw):
    settings = dict(data=str(data), out=str(out), epochs=4, batch_size=32, hidden_dim=4)
    settings.update(kw)
    return dna.Config(**settings)


def _history(run):
    return pd.read_csv(run / "history.csv")[LOSSES]


def test_run_folder_contents_and_learning(tiny_dna_csv, tmp_path):
    run = tmp_path / "run"
    summary = dna.train_and_evaluate(_config(tiny_dna_csv, run, epochs=12, lr=3e-2), progress=False)
    for name in ("config.json", "history.csv", "summary.json", "loss_curve.png"):
        assert (run / name).is_file(), name
    assert (run / "checkpoints" / "best").is_dir() and (run / "checkpoints" / "latest").is_dir()
    history = pd.read_csv(run / "history.csv")
    assert list(history.columns) == ["epoch", "train_loss", "val_loss", "lr", "epoch_seconds", "val_accuracy"]
    assert len(history) == 12 and summary["epochs_run"] == 12
    assert history.train_loss.iloc[-1] < history.train_loss.iloc[0]
    stored = json.loads((run / "summary.json").read_text())
    for key in ("test_auc", "last_test_auc", "best_epoch", "epochs_run", "compile_seconds",
                "median_epoch_seconds", "devices", "backend", "jax_version"):
        assert key in stored, key
    assert stored["best_epoch"] == int(history.val_loss.idxmin()) + 1
    assert 0.0 <= stored["test_auc"] <= 1.0
    assert json.loads((run / "config.json").read_text())["pipeline"] == "dna"


def test_same_seed_same_history_and_resume_equals_uninterrupted(tiny_dna_csv, tmp_path):
    a = tmp_path / "a"
    dna.train_and_evaluate(_config(tiny_dna_csv, a), progress=False)
    b = tmp_path / "b"
    dna.train_and_evaluate(_config(tiny_dna_csv, b), progress=False)
    pd.testing.assert_frame_equal(_history(a), _history(b))

    c = tmp_path / "c"  # stopped after epoch 2, then resumed to 4
    dna.train_and_evaluate(_config(tiny_dna_csv, c, epochs=2), progress=False)
    summary = dna.train_and_evaluate(_config(tiny_dna_csv, c, epochs=4), progress=False)
    assert summary["resumed_from_epoch"] == 2
    pd.testing.assert_frame_equal(_history(a), _history(c))


def test_two_devices_match_one_device(tiny_dna_csv, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    dna.train_and_evaluate(_config(tiny_dna_csv, one, epochs=3), progress=False)
    dna.train_and_evaluate(_config(tiny_dna_csv, two, epochs=3, devices=2), progress=False)
    h1, h2 = _history(one), _history(two)
    np.testing.assert_allclose(h1.to_numpy(float), h2.to_numpy(float), atol=1e-4)


def test_variable_length_sequences_train_and_predict(tmp_path):
    seqs, labels = motif_sequences(120, 30, seed=3)
    seqs = [s[: 16 + i % 15] for i, s in enumerate(seqs)]
    path = tmp_path / "ragged.csv"
    pd.DataFrame({"seq": seqs, "bind": labels}).to_csv(path, index=False)
    run = tmp_path / "run"
    dna.train_and_evaluate(_config(path, run, epochs=2), progress=False)
    out = tmp_path / "p.csv"
    result = dna.predict(run, path, out)
    assert result["n"] == 120 and result["auc"] is not None


def test_predict_keeps_order_and_columns_csv_and_fasta(tiny_dna_csv, tmp_path):
    run = tmp_path / "run"
    dna.train_and_evaluate(_config(tiny_dna_csv, run, epochs=2), progress=False)
    seqs, labels = motif_sequences(50, 24, seed=9)  # never seen
    unseen = tmp_path / "unseen.csv"
    pd.DataFrame({"id": [f"s{i}" for i in range(50)], "seq": seqs, "bind": labels}).to_csv(unseen, index=False)
    out = tmp_path / "pred.csv"
    result = dna.predict(run, unseen, out)
    table = pd.read_csv(out)
    assert list(table.columns) == ["id", "seq", "bind", "probability"]
    assert list(table.id) == [f"s{i}" for i in range(50)]
    assert table.probability.between(0, 1).all() and result["auc"] is not None
    assert dna.evaluate(run, unseen)["auc"] == pytest.approx(result["auc"])

    fasta = tmp_path / "x.fa"
    fasta.write_text("".join(f">r{i}\n{s}\n" for i, s in enumerate(seqs[:5])))
    out2 = tmp_path / "pred2.csv"
    assert dna.predict(run, fasta, out2)["auc"] is None
    table2 = pd.read_csv(out2)
    assert list(table2.columns) == ["id", "sequence", "probability"]
    np.testing.assert_allclose(table2.probability, table.probability[:5], atol=1e-6)


def test_resume_with_other_settings_or_other_model_is_refused(tiny_dna_csv, tmp_path):
    run = tmp_path / "run"
    dna.train_and_evaluate(_config(tiny_dna_csv, run, epochs=1), progress=False)
    with pytest.raises(InputError, match="other settings: hidden_dim=4"):
        dna.train_and_evaluate(_config(tiny_dna_csv, run, epochs=2, hidden_dim=8), progress=False)
    # a run folder whose checkpoint is of another model
    other = tmp_path / "other"
    dna.train_and_evaluate(_config(tiny_dna_csv, other, epochs=1, hidden_dim=8), progress=False)
    shutil.rmtree(other / "checkpoints")
    shutil.copytree(run / "checkpoints", other / "checkpoints")
    with pytest.raises(InputError, match=r"holds BiLSTMClassifier\(hidden_dim=4\), not BiLSTMClassifier\(hidden_dim=8\)"):
        dna.predict(other, tiny_dna_csv, tmp_path / "p.csv")


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tiny_dna_csv, tmp_path, monkeypatch):
    run = tmp_path / "run"
    dna.train_and_evaluate(_config(tiny_dna_csv, run, epochs=2), progress=False)
    original = dna.make_task

    def poisoned(config, model):
        task = original(config, model)
        return type(task)(**{**task.__dict__, "loss": lambda out, batch: task.loss(out, batch) * np.nan})

    monkeypatch.setattr(dna, "make_task", poisoned)
    with pytest.raises(TrainingDiverged, match="epoch 3: loss is not finite.*last good checkpoint \\(epoch 2\\) kept"):
        dna.train_and_evaluate(_config(tiny_dna_csv, run, epochs=4), progress=False)
    assert len(pd.read_csv(run / "history.csv")) == 2
    monkeypatch.setattr(dna, "make_task", original)
    dna.predict(run, tiny_dna_csv, tmp_path / "p.csv")  # the kept checkpoint still works


def _cli(*args, capsys):
    return run_launcher("dna", *args, capsys=capsys)


def _assert_one_line_error(proc, *fragments):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_cli_bad_input_one_line_exit_2_nothing_overwritten(tiny_dna_csv, tmp_path, capsys):
    run = tmp_path / "run"
    ok = _cli("--data", tiny_dna_csv, "--epochs", 1, "--batch-size", 32, "--hidden-dim", 4,
              "--out", run, "--quiet", capsys=capsys)
    assert ok.returncode == 0, ok.stderr
    assert "test_auc" in ok.stdout

    bad_char = tmp_path / "bad_char.csv"
    bad_char.write_text("seq,bind\nACGT,1\nACXT,0\n")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    no_col = tmp_path / "nocol.csv"
    no_col.write_text("sequence,bind\nACGT,1\n")
    bad_label = tmp_path / "bad_label.csv"
    bad_label.write_text("seq,bind\nACGT,1\nACGT,yes\n")
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("seq,bind\nACGT,1\nAC,0\n")

    new_run = tmp_path / "new_run"
    cases = [
        (bad_char, ["bad_char.csv", "line 3", "unknown character 'X'"]),
        (empty, ["empty.csv", "file is empty"]),
        (no_col, ["nocol.csv", "no column 'seq'"]),
        (bad_label, ["bad_label.csv", "line 3", "not 0 or 1"]),
    ]
    for path, fragments in cases:
        proc = _cli("--data", path, "--epochs", 1, "--out", new_run, capsys=capsys)
        _assert_one_line_error(proc, *fragments)
        assert not new_run.exists()  # nothing written for bad input

    # predict: existing output untouched when the input or run folder is bad
    out = tmp_path / "keep.csv"
    out.write_text("precious\n")
    for args, fragments in [
        (["--checkpoint", tmp_path / "missing", "--input", tiny_dna_csv], ["missing", "no such run folder"]),
        (["--checkpoint", tmp_path, "--input", tiny_dna_csv], ["not a run folder"]),
        (["--checkpoint", run, "--input", bad_char], ["bad_char.csv", "unknown character"]),
        (["--checkpoint", run, "--input", tmp_path / "nope.csv"], ["nope.csv", "no such file"]),
    ]:
        _assert_one_line_error(_cli("predict", *args, "--output", out, capsys=capsys), *fragments)
        assert out.read_text() == "precious\n"
    # evaluate needs labels; ragged lengths are fine for the LSTM
    unlabeled = tmp_path / "unlabeled.csv"
    unlabeled.write_text("seq\nACGTACGTACGTACGTACGTACGT\n")
    _assert_one_line_error(_cli("evaluate", "--checkpoint", run, "--input", unlabeled, capsys=capsys),
                           "unlabeled.csv", "no label column")
    assert _cli("evaluate", "--checkpoint", run, "--input", tiny_dna_csv, capsys=capsys).returncode == 0
