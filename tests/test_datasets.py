"""Prepared TFDS datasets: prepare -> train gives the original history, readers equal the
in-memory arrays, reading needs no TensorFlow, and bad datasets are named in one line."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from molml_jax.datasets import ArrayReader, is_prepared, open_prepared
from molml_jax.errors import InputError
from molml_jax.pipelines import dna, segmentation, tf_binding

from conftest import REPO, motif_sequences, run_launcher, write_tiny_dna_csv

COMPARED = ["epoch", "train_loss", "val_loss"]  # and every val_<metric>; epoch_seconds differ


def _same_history(first, second):
    a, b = pd.read_csv(first / "history.csv"), pd.read_csv(second / "history.csv")
    columns = COMPARED + [c for c in a.columns if c.startswith("val_") and c != "val_loss"]
    assert len(a) == 2 and list(a.columns) == list(b.columns)
    np.testing.assert_allclose(a[columns].to_numpy(), b[columns].to_numpy(), rtol=1e-5, atol=1e-5)


def _ok(result):
    assert result.returncode == 0, result.stderr[-2000:]
    return result


@pytest.fixture(scope="module")
def dna_prepared(tmp_path_factory):
    """(csv, DATA_DIR) of the tiny DNA file prepared with split seed 1."""
    folder = tmp_path_factory.mktemp("dna")
    csv = write_tiny_dna_csv(folder)
    out = folder / "prepared"
    dna.prepare(dna.Config(data=str(csv), seed=1), out)
    return csv, out


def _files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow  # two tiny trainings: 24 s (dna), 84 s (U-Net) on 2 shared cores
def test_dna_prepare_then_train_equals_training_from_the_file(tiny_dna_csv, tmp_path, capsys):
    data_dir = tmp_path / "data"
    result = _ok(run_launcher("dna", "prepare", "--out", data_dir, "--data", tiny_dna_csv, "--seed", 1, capsys=capsys))
    assert result.stdout.count("\n") == 1 and "prepared dna dataset 1.0.0" in result.stdout
    assert "train" in result.stdout and "bytes" in result.stdout
    layout = sorted(p.name for p in (data_dir / "molml_dna" / "1.0.0").iterdir())
    assert layout == ["dataset_info.json", "features.json", "metadata.json",
                      "molml_dna-test.array_record-00000-of-00001", "molml_dna-train.array_record-00000-of-00001",
                      "molml_dna-validation.array_record-00000-of-00001"]
    meta = json.loads((data_dir / "molml_dna" / "1.0.0" / "metadata.json").read_text())
    assert meta["pipeline"] == "dna" and meta["settings"]["seed"] == 1 and meta["variable_length"] is False
    assert meta["parts"] == {"train": 173, "val": 19, "test": 48} and len(meta["sources"]["tiny.csv"]) == 64
    # again with the same settings: kept; with another seed: refused, nothing rewritten
    before = _files(data_dir)
    assert "kept" in _ok(run_launcher("dna", "prepare", "--out", data_dir, "--data", tiny_dna_csv, "--seed", 1,
                                      capsys=capsys)).stdout
    refused = run_launcher("dna", "prepare", "--out", data_dir, "--data", tiny_dna_csv, "--seed", 2, capsys=capsys)
    assert refused.returncode == 2 and str(data_dir) in refused.stderr and "other settings" in refused.stderr
    assert _files(data_dir) == before

    tiny = ["--epochs", 2, "--hidden-dim", 4, "--batch-size", 32, "--seed", 1, "--quiet"]
    _ok(run_launcher("dna", "train", "--data", data_dir, "--out", tmp_path / "prepared_run", *tiny, capsys=capsys))
    _ok(run_launcher("dna", "train", "--data", tiny_dna_csv, "--out", tmp_path / "file_run", *tiny, capsys=capsys))
    _same_history(tmp_path / "prepared_run", tmp_path / "file_run")
    summary = json.loads((tmp_path / "prepared_run" / "summary.json").read_text())
    assert summary["data"].startswith("prepared dna dataset 1.0.0 at ") and "split seed 1; from CSV tiny.csv" in summary["data"]
    assert summary["n_train"] == 173


def test_tf_binding_prepare_simulated_then_train_equals_simulated(tmp_path, capsys):
    data_dir = tmp_path / "data"
    sim = ["--simulate-windows", 60, "--simulate-length", 40, "--simulate-seed", 3, "--seed", 2]
    _ok(run_launcher("tf_binding", "prepare", "--out", data_dir, *sim, capsys=capsys))
    meta = open_prepared(data_dir, "tf_binding").metadata
    assert meta["parts"] == {"train": 48, "val": 12} and meta["sources"]["simulated"]["simulate_windows"] == 60
    tiny = ["--epochs", 2, "--num-channels", 4, "--num-blocks", 1, "--batch-size", 16, "--seed", 2, "--quiet"]
    _ok(run_launcher("tf_binding", "train", "--data", data_dir, "--out", tmp_path / "prepared_run", *tiny, capsys=capsys))
    _ok(run_launcher("tf_binding", "train", *sim[:6], "--out", tmp_path / "sim_run", *tiny, capsys=capsys))
    _same_history(tmp_path / "prepared_run", tmp_path / "sim_run")
    config = json.loads((tmp_path / "prepared_run" / "config.json").read_text())
    assert config["window_length"] == 40 and config["data_source"].startswith("prepared tf_binding dataset")
    # a prepared dataset together with data flags: one line, no run folder
    both = run_launcher("tf_binding", "train", "--data", data_dir, "--simulate-windows", 80, "--out",
                        tmp_path / "never", capsys=capsys)
    assert both.returncode == 2 and "--simulate-windows cannot be given" in both.stderr
    assert both.stderr.count("\n") == 1 and not (tmp_path / "never").exists()


@pytest.mark.slow  # two tiny trainings: 24 s (dna), 84 s (U-Net) on 2 shared cores
def test_segmentation_prepare_then_train_equals_training_from_pairs(pairs_dir, tmp_path, capsys):
    data_dir = tmp_path / "data"
    pairs = ["--data", pairs_dir, "--image-tag", "raw", "--mask-tag", "label"]
    _ok(run_launcher("segmentation", "prepare", "--out", data_dir, *pairs, "--seed", 0, capsys=capsys))
    prepared = open_prepared(data_dir / "molml_segmentation" / "1.0.0", "segmentation")  # the version folder works too
    assert prepared.parts == {"train": 14, "val": 2, "test": 4} and len(prepared.metadata["sources"]) == 40
    tiny = ["--epochs", 2, "--num-kernel", 2, "--batch-size", 4, "--seed", 0, "--quiet"]
    _ok(run_launcher("segmentation", "train", "--data", data_dir, "--out", tmp_path / "prepared_run", *tiny, capsys=capsys))
    _ok(run_launcher("segmentation", "train", *pairs, "--out", tmp_path / "pairs_run", *tiny, capsys=capsys))
    _same_history(tmp_path / "prepared_run", tmp_path / "pairs_run")
    assert (tmp_path / "prepared_run" / "segmentation_examples.png").is_file()


def _assert_reader_equals_arrays(data, rng):
    for part in data.split:
        arrays = data.arrays(part)
        reader = data.reader(part)
        assert reader.n == len(data.split[part])
        idx = rng.permutation(reader.n)[: max(1, reader.n // 2)]
        batch = reader.read(idx)
        assert batch.keys() == arrays.keys()
        for key, values in arrays.items():
            assert batch[key].dtype == values.dtype
            np.testing.assert_array_equal(batch[key], values[idx])


def test_reader_equals_arrays_in_memory_and_prepared_also_ragged(dna_prepared, tmp_path):
    rng = np.random.default_rng(0)
    csv, data_dir = dna_prepared
    in_memory = dna.load_data(dna.Config(data=str(csv), seed=1))
    prepared = dna.load_data(dna.Config(data=str(data_dir), seed=5))  # the train seed does not change the split
    assert isinstance(in_memory.reader("val"), ArrayReader) and prepared.split_seed == 1
    for data in (in_memory, prepared):
        _assert_reader_equals_arrays(data, rng)
    for part in in_memory.split:  # bit for bit the pipeline's arrays
        for key, values in in_memory.arrays(part).items():
            np.testing.assert_array_equal(prepared.arrays(part)[key], values)
    # lazy columns: shapes, dtypes, items, slices; names survive
    assert prepared.x.shape == in_memory.x.shape and prepared.x.dtype == np.float32 and len(prepared.y) == 240
    first = in_memory.split["train"][0]
    assert prepared.names[0] == in_memory.names[first] and prepared.y[0] == in_memory.y[first]
    np.testing.assert_array_equal(prepared.y[:3], in_memory.y[in_memory.split["train"][:3]])
    np.testing.assert_array_equal(prepared.y[prepared.split["test"]], in_memory.y[in_memory.split["test"]])

    seqs, labels = motif_sequences(40, 20, seed=1)
    seqs = [s[: 12 + i % 8] for i, s in enumerate(seqs)]  # ragged: `length` is a batch key
    ragged_csv = tmp_path / "ragged.csv"
    pd.DataFrame({"seq": seqs, "bind": labels}).to_csv(ragged_csv)
    ragged = dna.load_data(dna.Config(data=str(ragged_csv)))
    dna.prepare(dna.Config(data=str(ragged_csv)), tmp_path / "ragged")
    ragged_prepared = dna.load_data(dna.Config(data=str(tmp_path / "ragged")))
    assert ragged_prepared.variable_length and "length" in ragged_prepared.arrays("train")
    for data in (ragged, ragged_prepared):
        _assert_reader_equals_arrays(data, rng)
    np.testing.assert_array_equal(ragged_prepared.arrays("test")["length"], ragged.arrays("test")["length"])

    sim = tf_binding.Config(simulate_windows=20, simulate_length=30)
    tf_prepared = tf_binding.prepare(sim, tmp_path / "tf")
    assert tf_prepared.parts == {"train": 16, "val": 4}
    for data in (tf_binding.load_data(sim), tf_binding.load_data(tf_binding.Config(data=str(tmp_path / "tf")))):
        _assert_reader_equals_arrays(data, rng)


def test_segmentation_reader_and_exact_float_images(pairs_dir, tmp_path):
    config = segmentation.Config(data=str(pairs_dir), image_tag="raw", mask_tag="label", resize=(16, 16))
    segmentation.prepare(config, tmp_path / "seg")
    in_memory = segmentation.load_data(config)
    prepared = segmentation.load_data(segmentation.Config(data=str(tmp_path / "seg")))
    for part in in_memory.split:  # resized: not 8-bit values, still bit for bit
        for key, values in in_memory.arrays(part).items():
            np.testing.assert_array_equal(prepared.arrays(part)[key], values)
    _assert_reader_equals_arrays(prepared, np.random.default_rng(1))
    assert isinstance(prepared.names[0], str) and prepared.images.shape == (20, 16, 16)


def test_reading_needs_no_tensorflow(dna_prepared):
    _, data_dir = dna_prepared
    script = f"""
import importlib.util, sys
# TensorFlow absent even where it is installed: imports fail, and probes (etils and tfds
# ask importlib.util.find_spec) say it is not there
def blocked(name):
    return name == "tensorflow" or name.startswith("tensorflow.")
class Block:
    def find_spec(self, name, path=None, target=None):
        if blocked(name):
            raise ModuleNotFoundError("No module named " + repr(name) + " (blocked)")
sys.meta_path.insert(0, Block())
_find_spec = importlib.util.find_spec
importlib.util.find_spec = lambda name, package=None: None if blocked(name) else _find_spec(name, package)
import tensorflow_datasets as tfds
src = tfds.builder_from_directory({str(data_dir / 'molml_dna' / '1.0.0')!r}).as_data_source()
record = src["train"][0]
assert record["x"].shape == (24, 4) and record["x"].dtype.name == "uint8", record
assert len(src["validation"].__getitems__([0, 1])) == 2
by_name = tfds.data_source("molml_dna", data_dir={str(data_dir)!r}, split="test")
assert len(by_name) == 48
assert not any(blocked(m) for m in sys.modules)
assert "molml_jax" not in sys.modules
print("ok", sorted(record))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ok ['label', 'length', 'name', 'x']" in result.stdout


def _one_line_exit_2(result, path, words):
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr
    assert str(path) in result.stderr and words in result.stderr, result.stderr


def test_bad_prepared_datasets_one_line_exit_2_nothing_overwritten(dna_prepared, tmp_path, capsys):
    csv, data_dir = dna_prepared
    train = ["--epochs", 1, "--hidden-dim", 4, "--quiet", "--out"]
    # not a prepared dataset (tf_binding's --data is only that)
    (tmp_path / "empty").mkdir()
    result = run_launcher("tf_binding", "train", "--data", tmp_path / "empty", "--out", tmp_path / "r0", capsys=capsys)
    _one_line_exit_2(result, tmp_path / "empty", "not a prepared dataset")
    # another pipeline's dataset, for training and for preparing into it
    result = run_launcher("segmentation", "train", "--data", data_dir, "--out", tmp_path / "r1", capsys=capsys)
    _one_line_exit_2(result, data_dir, "is a prepared dna dataset, not segmentation")
    before = _files(data_dir)
    result = run_launcher("tf_binding", "prepare", "--out", data_dir, "--simulate-windows", 20, capsys=capsys)
    _one_line_exit_2(result, data_dir, "is a prepared dna dataset, not tf_binding")
    assert _files(data_dir) == before
    # conflicting data flags
    result = run_launcher("dna", "train", "--data", data_dir, "--seq-column", "other", *train, tmp_path / "r2",
                          capsys=capsys)
    _one_line_exit_2(result, data_dir, "--seq-column cannot be given")
    # another version
    newer = tmp_path / "newer"
    shutil.copytree(data_dir, newer)
    (newer / "molml_dna" / "1.0.0").rename(newer / "molml_dna" / "9.0.0")
    result = run_launcher("dna", "train", "--data", newer, *train, tmp_path / "r3", capsys=capsys)
    _one_line_exit_2(result, newer, "version 9.0.0")
    # a truncated data file: found when opened
    truncated = tmp_path / "truncated"
    shutil.copytree(data_dir, truncated)
    shard = truncated / "molml_dna" / "1.0.0" / "molml_dna-train.array_record-00000-of-00001"
    shard.write_bytes(shard.read_bytes()[:-100])
    result = run_launcher("dna", "train", "--data", truncated, *train, tmp_path / "r4", capsys=capsys)
    _one_line_exit_2(result, shard, "truncated")
    # overwritten bytes of the same size: found when read
    damaged = tmp_path / "damaged"
    shutil.copytree(data_dir, damaged)
    shard = damaged / "molml_dna" / "1.0.0" / "molml_dna-train.array_record-00000-of-00001"
    raw = bytearray(shard.read_bytes())
    raw[100:140] = b"\x07" * 40  # the first chunk: found when opened
    shard.write_bytes(bytes(raw))
    result = run_launcher("dna", "train", "--data", damaged, *train, tmp_path / "r5", capsys=capsys)
    _one_line_exit_2(result, shard, "corrupt")
    assert not any((tmp_path / f"r{i}").exists() for i in range(6))
    assert is_prepared(data_dir) and not is_prepared(tmp_path / "empty") and not is_prepared(csv)
    # damage in the middle of a large file is found when the records are read
    prepared = open_prepared(data_dir, "dna")
    prepared._sources["train"] = _Failing()
    with pytest.raises(InputError, match="cannot read the train records .*corrupt"):
        prepared.read("train", np.arange(3))


class _Failing:
    def __getitems__(self, indices):
        raise RuntimeError("Corrupted Riegeli/records file: chunk header hash mismatch")


def test_damaged_chunk_is_found_by_verify(tmp_path):
    seqs, labels = motif_sequences(3000, 64, seed=2)  # train file over several 64 KiB chunks
    csv = tmp_path / "big.csv"
    pd.DataFrame({"seq": seqs, "bind": labels}).to_csv(csv)
    dna.prepare(dna.Config(data=str(csv)), tmp_path / "big")
    shard = tmp_path / "big" / "molml_dna" / "1.0.0" / "molml_dna-train.array_record-00000-of-00001"
    raw = bytearray(shard.read_bytes())
    middle = len(raw) // 2
    raw[middle:middle + 64] = b"\x07" * 64
    shard.write_bytes(bytes(raw))
    prepared = open_prepared(tmp_path / "big", "dna")  # sizes, counts, first and last chunk fine
    with pytest.raises(InputError, match="corrupt"):
        prepared.verify()
