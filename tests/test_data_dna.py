import gzip
import hashlib

import numpy as np
import pandas as pd
import pytest

from molml_jax.data import default_dna_csv, one_hot, read_fasta, read_labeled_csv, read_sequences, split_indices
from molml_jax.errors import InputError

from conftest import REPO


def test_one_hot_order_case_and_ambiguity_codes():
    x, lengths = one_hot(["ACGTn", "acgtR"])
    assert x.shape == (2, 5, 4) and x.dtype == np.float32
    np.testing.assert_array_equal(x[0, :4], np.eye(4))
    np.testing.assert_array_equal(x[1, :4], np.eye(4))  # lower case (soft-masked genome)
    np.testing.assert_array_equal(x[:, 4], 0)  # N and R: unknown base -> zeros
    np.testing.assert_array_equal(lengths, [5, 5])


def test_one_hot_unknown_character_names_record_and_character():
    with pytest.raises(InputError, match=r"f\.csv: line 3: unknown character 'Z' at position 3"):
        one_hot(["ACGT", "ACZT"], names=["line 2", "line 3"], source="f.csv")
    with pytest.raises(InputError, match="unknown character 'é'"):
        one_hot(["ACGT", "ACéT"])


def test_one_hot_ragged_is_an_error_unless_allowed():
    with pytest.raises(InputError, match="differ in length"):
        one_hot(["ACGT", "AC"])
    x, lengths = one_hot(["ACGT", "AC"], allow_ragged=True)
    assert x.shape == (2, 4, 4)
    np.testing.assert_array_equal(lengths, [4, 2])
    np.testing.assert_array_equal(x[1, 2:], 0)


def test_one_hot_empty_inputs():
    with pytest.raises(InputError, match="no sequences"):
        one_hot([])
    with pytest.raises(InputError, match="record 2 has an empty sequence"):
        one_hot(["AC", ""], allow_ragged=True)


def test_bundled_data_is_the_course_file():
    digest = hashlib.sha256(default_dna_csv().read_bytes()).hexdigest()
    assert digest == "b2a04550b65e8656007d5095d263f75a48267fda1632f3d9ad2bb3fc18104a4d"
    shared = REPO.parent / "shared" / "data" / "SHA256SUMS"
    if shared.exists():
        assert f"{digest}  dna_binding.csv" in shared.read_text()
    records = read_labeled_csv(default_dna_csv())
    assert len(records) == 12904 and set(np.unique(records.labels)) == {0, 1}


def test_csv_with_other_column_names_and_tsv(tmp_path):
    path = tmp_path / "x.tsv"
    pd.DataFrame({"dna": ["ACGT", "GGCC"], "label": [1, 0]}).to_csv(path, sep="\t", index=False)
    records = read_labeled_csv(path, seq_column="dna", label_column="label")
    assert records.sequences == ["ACGT", "GGCC"] and list(records.labels) == [1, 0]


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "file is empty"),
        ("seq,bind\n", "no rows after the header"),
        ("sequence,bind\nACGT,1\n", "no column 'seq'"),
        ("seq,label\nACGT,1\n", "no column 'bind'"),
        ("seq,bind\nACGT,1\nACGT,2\n", "line 3: label '2' in column 'bind' is not 0 or 1"),
        ("seq,bind\nACGT,1\nACGT,\n", "line 3: empty label"),
    ],
)
def test_csv_bad_input_names_file_and_problem(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(InputError, match=message) as err:
        read_labeled_csv(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_sequences(tmp_path / "nope.csv")
    with pytest.raises(InputError, match="is a folder"):
        read_sequences(tmp_path)


def test_fasta_plain_and_gzip(tmp_path):
    text = ">chr1:1-8 first\nACGT\nacgt\n\n>second\nNNAC\n"
    plain = tmp_path / "x.fa"
    plain.write_text(text)
    zipped = tmp_path / "x.fasta.gz"
    with gzip.open(zipped, "wt") as handle:
        handle.write(text)
    for path in (plain, zipped):
        records = read_sequences(path, require_labels=False)
        assert records.names == ["chr1:1-8 first", "second"]
        assert records.sequences == ["ACGTacgt", "NNAC"] and records.labels is None
    with pytest.raises(InputError, match="FASTA has no labels"):
        read_sequences(plain)


def test_fasta_bad_input(tmp_path):
    path = tmp_path / "bad.fa"
    path.write_text("ACGT\n>x\nAC\n")
    with pytest.raises(InputError, match="line 1: sequence before the first '>'"):
        read_fasta(path)
    path.write_text("no header here\n")
    path2 = tmp_path / "none.fa"
    path2.write_text("\n\n")
    with pytest.raises(InputError, match="no FASTA records"):
        read_fasta(path2)


def test_split_is_deterministic_disjoint_and_sized():
    a = split_indices(12904, seed=0)
    b = split_indices(12904, seed=0)
    c = split_indices(12904, seed=1)
    for part in ("train", "val", "test"):
        np.testing.assert_array_equal(a[part], b[part])
    assert not np.array_equal(a["test"], c["test"])
    assert len(a["test"]) == 2581 and len(a["val"]) == 1032 and len(a["train"]) == 9291
    everything = np.concatenate([a["train"], a["val"], a["test"]])
    assert len(np.unique(everything)) == 12904
