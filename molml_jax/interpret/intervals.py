"""Score genomic intervals (BED, narrowPeak) with any model: one window per interval.

Input (plain or gzip): BED, 3 or more tab-separated columns chrom, start, end (0-based,
end-exclusive) [name score strand ...], or narrowPeak, exactly 10 columns whose 10th is the
summit's offset from start (-1: none). A file is narrowPeak when its name ends in
.narrowPeak (optionally .gz, any case) or its first interval has exactly 10 columns (as
ENCODE's peak files named .bed.gz; a 10-column BED is not a valid BED layout). Lines that
are empty or start with '#', 'track' or 'browser' are skipped; every interval must have
as many columns as the first.

Each interval's window of `length` bp is centered on its summit (start + summit) when
there is one, else on its middle base start + (end - start) // 2, with the centering rule
of `molml_jax.interpret.genome` (the window starts at center - length // 2; an interval
resized to its own width is itself).

Status: `unknown_contig` (not in the FASTA, with or without a 'chr' prefix),
`near_contig_end` (the window runs past a contig end; no N padding), `ok` (scored).

Output TSV, one row per interval in input order, written whole or not at all: the
interval's own fields, verbatim, under the names chrom, start, end, name, score, strand,
thickStart, thickEnd, itemRgb, blockCount, blockSizes, blockStarts (BED; later columns
column13, ...) or chrom, start, end, name, score, strand, signalValue, pValue, qValue,
peak (narrowPeak); then window_start, window_end (0-based, end-exclusive; computed for
every interval, so outside the contig for near_contig_end), status, and `prediction` for a
score of one value per window, or `prediction_sum` and `prediction_max` over the window
for a score of one value per base.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Iterator, NamedTuple, Sequence

import numpy as np

from molml_jax.data.dna import one_hot
from molml_jax.errors import InputError
from molml_jax.interpret._io import (
    PER_BASE, READ_ERRORS, WINDOW, Score, atomic_table, batches, check_file, few, first_line, number, open_text, run_score,
)
from molml_jax.interpret.genome import Genome, window_start

BED, NARROWPEAK = "bed", "narrowPeak"
BED_COLUMNS = ("chrom", "start", "end", "name", "score", "strand", "thickStart", "thickEnd", "itemRgb",
               "blockCount", "blockSizes", "blockStarts")
NARROWPEAK_COLUMNS = ("chrom", "start", "end", "name", "score", "strand", "signalValue", "pValue", "qValue", "peak")
OK, UNKNOWN_CONTIG, NEAR_CONTIG_END = "ok", "unknown_contig", "near_contig_end"
STATUSES = (OK, UNKNOWN_CONTIG, NEAR_CONTIG_END)
_SKIP = ("#", "track", "browser")


class Interval(NamedTuple):
    """One line of a BED/narrowPeak file: start, end 0-based end-exclusive; summit the
    offset of the summit from start, or None; fields every column as written; line the
    1-based line number in the file; format BED or NARROWPEAK."""

    chrom: str
    start: int
    end: int
    summit: int | None
    fields: tuple[str, ...]
    line: int
    format: str


def interval_center(interval: Interval) -> int:
    """The 0-based base a window is centered on: the summit, else the middle base."""
    if interval.summit is not None:
        return interval.start + interval.summit
    return interval.start + (interval.end - interval.start) // 2


def field_names(interval: Interval) -> list[str]:
    """Column names of the interval's fields in the output."""
    if interval.format == NARROWPEAK:
        return list(NARROWPEAK_COLUMNS)
    n = len(interval.fields)
    return list(BED_COLUMNS[:n]) + [f"column{i + 1}" for i in range(len(BED_COLUMNS), n)]


# ----------------------------------------------------------------------------- reading


def read_intervals(path: str | os.PathLike) -> Iterator[Interval]:
    """The intervals of a BED or narrowPeak file (module docstring), in file order, read
    lazily. A malformed line is an `InputError` "FILE: line K: problem"."""
    path = Path(path)
    check_file(path, "BED or narrowPeak")
    return _intervals(path)


def _named_narrowpeak(path: Path) -> bool:
    name = path.name.lower()
    return name.removesuffix(".gz").endswith(".narrowpeak")


def _intervals(path: Path) -> Iterator[Interval]:
    fmt, width = (NARROWPEAK if _named_narrowpeak(path) else None), None
    try:
        with open_text(path) as handle:
            for lineno, text in enumerate(handle, start=1):
                text = text.rstrip("\r\n")
                if not text.strip() or text.startswith(_SKIP):
                    continue
                fields = tuple(f.strip() for f in text.split("\t"))
                if width is None:
                    width = len(fields)
                    fmt = fmt or (NARROWPEAK if width == 10 else BED)
                yield _interval(path, lineno, fields, fmt, width)
    except READ_ERRORS as err:
        raise InputError(f"{path}: not a readable BED or narrowPeak file ({first_line(err)})") from None


def _integer(where: str, what: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise InputError(f"{where}: {what} '{text}' is not an integer") from None


def _interval(path: Path, lineno: int, fields: tuple[str, ...], fmt: str, width: int) -> Interval:
    where = f"{path}: line {lineno}"
    if len(fields) < 3:
        hint = " (columns must be separated by tabs)" if " " in fields[0] else ""
        raise InputError(f"{where}: {len(fields)} column(s), BED needs at least 3 (chrom start end){hint}")
    if fmt == NARROWPEAK and len(fields) != 10:
        raise InputError(f"{where}: {len(fields)} column(s), narrowPeak has 10")
    if len(fields) != width:
        raise InputError(f"{where}: {len(fields)} column(s), the first interval has {width}")
    start, end = _integer(where, "start", fields[1]), _integer(where, "end", fields[2])
    if start < 0 or end < start:
        raise InputError(f"{where}: start {start}, end {end}: need 0 <= start <= end (0-based, end-exclusive)")
    summit = None
    if fmt == NARROWPEAK:
        summit = _integer(where, "summit offset (column 10)", fields[9])
        if summit == -1:
            summit = None
        elif not 0 <= summit < end - start:
            raise InputError(f"{where}: summit offset {summit} outside the peak (0 to {end - start - 1}, or -1 for none)")
    return Interval(fields[0], start, end, summit, fields, lineno, fmt)


# ----------------------------------------------------------------------------- windows


@dataclasses.dataclass(frozen=True)
class IntervalWindows:
    """x: float32 (M, length, 4), the one-hot windows of the M ok intervals, in order;
    status: (N,) one per interval; window_start: int64 (N,), 0-based (window_end is
    window_start + length), computed for every interval."""

    x: np.ndarray
    status: list[str]
    window_start: np.ndarray


def interval_windows(intervals: Sequence[Interval], genome: Genome, length: int) -> IntervalWindows:
    """One-hot windows of `length` bp centered on each interval (module docstring)."""
    starts = np.array([window_start(interval_center(i), length) for i in intervals], dtype=np.int64)
    status, sequences, names = [], [], []
    for interval, start in zip(intervals, starts):
        contig = genome.resolve(interval.chrom)
        if contig is None:
            status.append(UNKNOWN_CONTIG)
            continue
        window = genome.window(contig, interval_center(interval), length)
        status.append(NEAR_CONTIG_END if window is None else OK)
        if window is not None:
            sequences.append(window)
            names.append(f"window {contig}:{start + 1}-{start + length} (line {interval.line})")
    x = one_hot(sequences, names=names, source=str(genome.path))[0] if sequences else np.zeros((0, length, 4), np.float32)
    return IntervalWindows(x, status, starts)


# ----------------------------------------------------------------------------- scoring


def _predictions(score: Score, x: np.ndarray, kind: str | None) -> tuple[list[dict[str, str]], str | None]:
    """{column: text} of the prediction columns for each window of x, and the score's kind."""
    if len(x) == 0:
        return [], kind
    out, kind = run_score(score, x, kind)
    if kind == PER_BASE:
        return [{"prediction_sum": number(s), "prediction_max": number(m)}
                for s, m in zip(out.sum(axis=1), out.max(axis=1))], kind
    return [{"prediction": number(v)} for v in out], kind


def _prediction_columns(kind: str) -> list[str]:
    return ["prediction_sum", "prediction_max"] if kind == PER_BASE else ["prediction"]


def score_intervals(
    path: str | os.PathLike,
    genome_path: str | os.PathLike,
    score: Score,
    length: int,
    output: str | os.PathLike,
    *,
    batch_size: int = 256,
) -> dict:
    """Score the window of every interval of a BED/narrowPeak file and write them as a TSV.

    Args:
      score: one-hot windows float32 (B, length, 4) (A, C, G, T; N a zero row), B <=
        batch_size -> np.ndarray (B,) (one value per window) or (B, length) (per base).
      length: the model's window length.
      output: the TSV to write (module docstring for its columns).

    Returns {'rows', 'status': {status: count}, 'score': 'window', 'per_base' or None,
    'chr_prefix_matched': bool, 'renamed': {interval contig: FASTA name}}. Raises
    `InputError` for a bad file, and when there are intervals but none of their contigs is
    in the FASTA; nothing is written then.
    """
    if length < 1 or batch_size < 1:
        raise ValueError(f"length and batch_size must be >= 1, got {length} and {batch_size}")
    intervals = read_intervals(path)
    counts = dict.fromkeys(STATUSES, 0)
    unmatched: dict[str, None] = {}
    names, kind = None, None
    with Genome(genome_path) as genome, atomic_table(output) as table:
        for batch in batches(intervals, batch_size):
            names = names or field_names(batch[0])
            windows = interval_windows(batch, genome, length)
            predictions, kind = _predictions(score, windows.x, kind)
            if kind is not None and table.columns is None:
                table.header(names + ["window_start", "window_end", "status"] + _prediction_columns(kind))
            scored = iter(predictions)
            rows = []
            for interval, status, start in zip(batch, windows.status, windows.window_start):
                counts[status] += 1
                if status == UNKNOWN_CONTIG:
                    unmatched[interval.chrom] = None
                row = dict(zip(names, interval.fields))
                row.update(window_start=str(start), window_end=str(start + length), status=status,
                           **(next(scored) if status == OK else {}))
                rows.append(row)
            table.write(rows)
        if counts[UNKNOWN_CONTIG] and counts[UNKNOWN_CONTIG] == sum(counts.values()):
            raise InputError(f"{genome.path}: no sequence name matches a contig of {path}, with or without a "
                             f"'chr' prefix (FASTA: {few(genome.names)}; intervals: {few(unmatched)})")
        if table.columns is None:
            fields = names or list(NARROWPEAK_COLUMNS if _named_narrowpeak(Path(path)) else BED_COLUMNS[:3])
            table.header(fields + ["window_start", "window_end", "status"] + _prediction_columns(kind or WINDOW))
    return {"rows": sum(counts.values()), "status": counts, "score": kind,
            "chr_prefix_matched": genome.prefix_matched, "renamed": dict(genome.renamed)}
