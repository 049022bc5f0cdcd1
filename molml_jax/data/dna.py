"""DNA sequences -> arrays: one-hot encoding and readers for labeled CSV and FASTA.

Pure numpy/pandas (no JAX). Every problem with a file is an `InputError` whose message
names the file, the line or record, and the problem.
"""

from __future__ import annotations

import dataclasses
import gzip
import importlib.resources
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from molml_jax.errors import InputError

BASES = "ACGT"
# IUPAC ambiguity codes (and N) encode as all zeros: the base is unknown.
AMBIGUOUS = "NRYSWKMBDHV"
FASTA_SUFFIXES = (".fa", ".fasta", ".fna", ".fas")

_ZERO, _INVALID = 4, 5
_CODE = np.full(256, _INVALID, dtype=np.uint8)
for _i, _b in enumerate(BASES):
    _CODE[ord(_b)] = _CODE[ord(_b.lower())] = _i
for _b in AMBIGUOUS:
    _CODE[ord(_b)] = _CODE[ord(_b.lower())] = _ZERO
_TABLE = np.concatenate([np.eye(4, dtype=np.float32), np.zeros((2, 4), np.float32)])


def default_dna_csv() -> Path:
    """The course's ChIP-seq file (12,904 sequences of 101 bp, columns seq, bind)."""
    return Path(str(importlib.resources.files("molml_jax.data") / "bundled" / "dna_binding.csv"))


@dataclasses.dataclass(frozen=True)
class SequenceRecords:
    """Sequences read from one file, in file order.

    names: one label per record used in messages and outputs ("line 5" or a FASTA header).
    labels: int32 (N,) of 0/1, or None when the file has no labels.
    table: the CSV as read (all its columns), or None for FASTA.
    """

    source: str
    names: list[str]
    sequences: list[str]
    labels: np.ndarray | None
    table: pd.DataFrame | None = None

    def __len__(self) -> int:
        return len(self.sequences)


def one_hot(
    sequences: Sequence[str],
    *,
    names: Sequence[str] | None = None,
    source: str = "sequences",
    allow_ragged: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """One-hot encode DNA, case-insensitive, in A, C, G, T order.

    N and other IUPAC ambiguity codes give all-zero rows; any other character is an
    `InputError` naming the record and the character.

    Returns:
      x: float32 (N, L, 4), L the longest sequence; shorter ones are zero-padded at the end.
      lengths: int32 (N,), the real length of each sequence.
    Raises `InputError` for ragged lengths unless `allow_ragged`, and for empty sequences.
    """
    names = list(names) if names is not None else [f"record {i + 1}" for i in range(len(sequences))]
    if len(sequences) == 0:
        raise InputError(f"{source}: no sequences")
    lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
    if lengths.min() == 0:
        i = int(np.argmin(lengths))
        raise InputError(f"{source}: {names[i]} has an empty sequence")
    if not allow_ragged and lengths.min() != lengths.max():
        i = int(np.argmax(lengths != lengths[0]))
        raise InputError(
            f"{source}: sequences differ in length ({names[0]} has {lengths[0]}, {names[i]} has "
            f"{lengths[i]}); this model needs one length"
        )
    try:
        flat = np.frombuffer("".join(sequences).encode("ascii"), dtype=np.uint8)
    except UnicodeEncodeError:
        flat = None
    if flat is None:  # non-ASCII somewhere: find it for the message
        for name, seq in zip(names, sequences):
            for pos, ch in enumerate(seq):
                if ord(ch) > 127:
                    raise InputError(f"{source}: {name}: unknown character {ch!r} at position {pos + 1}")
    codes = _CODE[flat]
    bad = np.flatnonzero(codes == _INVALID)
    if bad.size:
        starts = np.concatenate([[0], np.cumsum(lengths)])
        row = int(np.searchsorted(starts, bad[0], side="right") - 1)
        pos = int(bad[0] - starts[row])
        ch = chr(flat[bad[0]])
        raise InputError(
            f"{source}: {names[row]}: unknown character {ch!r} at position {pos + 1} "
            f"(expected A, C, G, T or an IUPAC code such as N)"
        )
    width = int(lengths.max())
    padded = np.full((len(sequences), width), _ZERO, dtype=np.uint8)
    mask = np.arange(width)[None, :] < lengths[:, None]
    padded[mask] = codes
    return _TABLE[padded], lengths.astype(np.int32)


def _check_file(path: Path) -> None:
    if path.is_dir():
        raise InputError(f"{path}: is a folder, expected a CSV or FASTA file")
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: file is empty")


def _labels_01(values: pd.Series, names: list[str], source: str, column: str) -> np.ndarray:
    """0/1 labels as int32; anything else names the first offending line."""
    text = values.astype(str).str.strip()
    ok = text.isin(["0", "1", "0.0", "1.0", "True", "False", "true", "false"])
    if not ok.all():
        i = int(np.argmin(ok.to_numpy()))
        raise InputError(f"{source}: {names[i]}: label '{text.iloc[i]}' in column '{column}' is not 0 or 1")
    return text.isin(["1", "1.0", "True", "true"]).to_numpy().astype(np.int32)


def read_labeled_csv(
    path: str | os.PathLike,
    *,
    seq_column: str = "seq",
    label_column: str = "bind",
    require_labels: bool = True,
) -> SequenceRecords:
    """Read a CSV (or TSV by suffix, optionally .gz) with a sequence and a 0/1 label column.

    The course file has columns (index, seq, bind). Without `require_labels` a missing
    label column gives `labels=None` (for prediction on unlabeled data).
    """
    path = Path(path)
    _check_file(path)
    sep = "\t" if ".tsv" in path.suffixes or ".txt" in path.suffixes else ","
    try:
        frame = pd.read_csv(path, sep=sep, dtype={seq_column: str}, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise InputError(f"{path}: file is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError, gzip.BadGzipFile, EOFError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(f"{path}: not a readable CSV ({first})") from None
    if seq_column not in frame.columns:
        raise InputError(
            f"{path}: no column '{seq_column}' (columns: {', '.join(map(str, frame.columns))}); "
            f"choose one with --seq-column"
        )
    if len(frame) == 0:
        raise InputError(f"{path}: no rows after the header")
    # line numbers as a text editor shows them (header is line 1)
    names = [f"line {i + 2}" for i in range(len(frame))]
    sequences = [s.strip() for s in frame[seq_column].astype(str)]
    labels = None
    if label_column in frame.columns:
        if (frame[label_column].astype(str).str.strip() == "").any():
            i = int(np.argmax((frame[label_column].astype(str).str.strip() == "").to_numpy()))
            raise InputError(f"{path}: {names[i]}: empty label in column '{label_column}'")
        labels = _labels_01(frame[label_column], names, str(path), label_column)
    elif require_labels:
        raise InputError(
            f"{path}: no column '{label_column}' (columns: {', '.join(map(str, frame.columns))}); "
            f"choose one with --label-column"
        )
    return SequenceRecords(str(path), names, sequences, labels, frame)


def read_fasta(path: str | os.PathLike) -> SequenceRecords:
    """Read a FASTA file (optionally .gz): one record per '>' header, sequence lines joined."""
    path = Path(path)
    _check_file(path)
    opener = gzip.open if path.suffix == ".gz" else open
    names: list[str] = []
    chunks: list[list[str]] = []
    try:
        with opener(path, "rt") as handle:
            for lineno, line in enumerate(handle, start=1):
                line = line.strip()
                if not line or line.startswith(";"):
                    continue
                if line.startswith(">"):
                    names.append(line[1:].strip() or f"record {len(names) + 1}")
                    chunks.append([])
                elif not chunks:
                    raise InputError(f"{path}: line {lineno}: sequence before the first '>' header")
                else:
                    chunks[-1].append(line)
    except (UnicodeDecodeError, gzip.BadGzipFile, EOFError, OSError) as err:
        raise InputError(f"{path}: not a readable FASTA file ({type(err).__name__}: {err})") from None
    if not names:
        raise InputError(f"{path}: no FASTA records (no line starts with '>')")
    return SequenceRecords(str(path), names, ["".join(c) for c in chunks], None)


def read_sequences(
    path: str | os.PathLike,
    *,
    seq_column: str = "seq",
    label_column: str = "bind",
    require_labels: bool = True,
) -> SequenceRecords:
    """Read CSV/TSV or FASTA by file suffix (.fa, .fasta, .fna, .fas, optionally .gz)."""
    path = Path(path)
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    if suffixes and suffixes[-1] in FASTA_SUFFIXES:
        records = read_fasta(path)
        if require_labels:
            raise InputError(f"{path}: FASTA has no labels; training needs a CSV with a label column")
        return records
    return read_labeled_csv(
        path, seq_column=seq_column, label_column=label_column, require_labels=require_labels
    )
