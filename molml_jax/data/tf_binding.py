"""TF-binding profiles: the course's two-file format, and a simulator that writes the same files.

File format (as the course's `chr22_sequences.txt.gz` / `chr22_scores.txt.gz`)
------------------------------------------------------------------------------
- sequences: tab-separated, gzip when the name ends in `.gz`, header `window_name  sequence`,
  one row per window (300 bp in the course).
- scores: tab-separated, gzip when the name ends in `.gz`, one column per window named by its
  `window_name`, one row per base, no index column. A leading integer index column (as
  pandas writes with `index=True`) is recognised and dropped. Scores are matched to
  sequences by window name, never by column order.

Simulated data (the course's files are not public)
--------------------------------------------------
`simulate_tf_binding` writes windows named `chr22sim:{start}-{end}` (0-based, end-exclusive,
tiled along a fictitious chromosome). Background DNA is a first-order Markov chain with the
human genome's base composition (A 0.295, C 0.205, G 0.205, T 0.295) and its CpG depletion:
the CpG dinucleotide is drawn at 25% of its expected frequency and the missing mass goes to
CpA and TpG, the products of methyl-cytosine deamination, so the composition and strand
symmetry are unchanged. This matters because several real motifs (SP1's GC box, NRF1)
contain CpG: an i.i.d. background would give them about four times too many chance matches.
Into each window go a Poisson number (mean 1.5; about 22% of windows get none) of
non-overlapping instances of real JASPAR 2024 matrices bundled with the package (CTCF
MA0139.1, SP1, CEBPB, GATA1, FOXA1, REST, YY1, NRF1), each base drawn from the motif's
position frequency matrix and the whole instance reverse-complemented for the minus strand.

The per-base score is then computed from the sequence alone, like a Homer motif scan: every
motif is turned into a log-odds matrix (natural log of the frequency, with a 1% pseudocount,
over the background composition) and slid along both strands of the whole window. A start
position is a match where the better strand's score reaches the motif's threshold: the score
that background DNA reaches with probability 1e-5 per position and strand (exact, from the
score distribution of the matrix), capped at 80% of the motif's maximum score because short
motifs (GATA1, FOXA1, YY1) cannot reach 1e-5 at all. Each base gets the largest score of
any match that covers it (over motifs and strands) and 0 elsewhere. Weak planted instances
therefore score 0, and chance matches in background DNA score like real ones, as they would
in Homer output; the planted sites are returned for tests and documentation only and are
never written into the files.

Large sets: `iter_simulated_tf_binding` yields the windows 10,000 at a time (the first
chunk is exactly what the simulator gave before chunking; later chunks draw from their own
seeded streams) and `write_tf_binding_chunks` writes them without holding the whole set.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gzip
import importlib.resources
import json
import math
import os
import re
import shutil
import uuid
import zlib
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple, Sequence

import numpy as np
import pandas as pd

from molml_jax.data.dna import BASES, FASTA_SUFFIXES, one_hot, read_fasta
from molml_jax.errors import InputError

# Human genome base composition (A, C, G, T), roughly 41% GC.
HUMAN_BACKGROUND = np.array([0.295, 0.205, 0.205, 0.295])
SEQ_COLUMNS = ("window_name", "sequence")
MOTIFS_FILE = "jaspar_motifs.json"
_READ_ERRORS = (pd.errors.ParserError, UnicodeDecodeError, gzip.BadGzipFile, EOFError, zlib.error, OSError)


# ----------------------------------------------------------------------------- motifs


@dataclasses.dataclass(frozen=True, eq=False)
class Motif:
    """A position count matrix.

    counts: float64 (W, 4), one row per motif position 5'->3', columns A, C, G, T.
    """

    id: str
    name: str
    counts: np.ndarray
    source: str = "custom"

    @property
    def width(self) -> int:
        return int(self.counts.shape[0])

    @property
    def frequencies(self) -> np.ndarray:
        """float64 (W, 4), each row sums to 1 (JASPAR rows need not have equal counts)."""
        return self.counts / self.counts.sum(axis=1, keepdims=True)


def _motifs_path() -> Path:
    return Path(str(importlib.resources.files("molml_jax.data") / "bundled" / MOTIFS_FILE))


@functools.lru_cache(maxsize=1)
def _bundled_motifs() -> tuple[Motif, ...]:
    doc = json.loads(_motifs_path().read_text())
    return tuple(
        Motif(m["id"], m["name"], np.asarray(m["counts"], dtype=np.float64), m["source"])
        for m in doc["motifs"]
    )


def load_motifs(ids: Sequence[str] | None = None) -> list[Motif]:
    """Bundled JASPAR 2024 matrices (see `jaspar_motifs.json`), all of them or those asked for.

    Each of `ids` may be a full matrix ID ("MA0139.1"), an ID without version ("MA0139")
    or a TF name ("CTCF", any case). Other JASPAR matrices: build a `Motif` from pyjaspar's
    counts (`pip install pyjaspar`; not a dependency of this package).
    """
    motifs = _bundled_motifs()
    if ids is None:
        return list(motifs)
    if isinstance(ids, str):
        ids = [ids]
    chosen = []
    for wanted in ids:
        key = str(wanted).strip()
        hits = [
            m for m in motifs
            if key == m.id or key == m.id.split(".")[0] or key.upper() == m.name.upper()
        ]
        if not hits:
            have = ", ".join(f"{m.id} {m.name}" for m in motifs)
            raise InputError(
                f"{MOTIFS_FILE}: no bundled motif '{key}' (bundled: {have}); for other JASPAR "
                f"matrices build a Motif from pyjaspar's counts"
            )
        chosen.append(hits[0])
    return chosen


def _as_motifs(motifs: Sequence[str | Motif] | None) -> list[Motif]:
    if motifs is None:
        return load_motifs()
    if isinstance(motifs, (str, Motif)):
        motifs = [motifs]
    out = [m if isinstance(m, Motif) else load_motifs([m])[0] for m in motifs]
    if not out:
        raise InputError("motifs: empty list; pass None for all bundled motifs")
    for m in out:
        c = np.asarray(m.counts)
        if c.ndim != 2 or c.shape[1] != 4 or c.shape[0] == 0 or (c < 0).any() or (c.sum(1) <= 0).any():
            raise InputError(f"motif {m.id}: counts must be (W, 4) non-negative with positive rows")
    return out


def log_odds(motif: Motif, background: np.ndarray = HUMAN_BACKGROUND, pseudocount: float = 0.01) -> np.ndarray:
    """Log-odds matrix float64 (W, 4), natural log, of the motif over `background`.

    Frequencies get `pseudocount` (relative to the site count) spread by the background, so
    a base never seen at a position costs a finite penalty (about ln(0.01) there).
    """
    freq = (motif.frequencies + pseudocount * background) / (1.0 + pseudocount)
    return np.log(freq / background)


def score_threshold(
    lo: np.ndarray,
    background: np.ndarray = HUMAN_BACKGROUND,
    max_pvalue: float = 1e-5,
    max_fraction: float = 0.8,
    step: float = 0.01,
) -> float:
    """The match threshold of a log-odds matrix `lo` (W, 4).

    The smallest score that i.i.d. `background` DNA reaches with probability <= `max_pvalue`
    at one position on one strand, computed exactly on a `step` grid by convolving the
    per-position score distributions; capped at `max_fraction` of the maximum score, since
    for short motifs even the best-scoring word is more frequent than `max_pvalue`.
    """
    q = np.round(lo / step).astype(np.int64)
    dist = np.ones(1)
    low = 0
    for row in q:
        base = int(row.min())
        new = np.zeros(dist.size + int(row.max()) - base)
        for b in range(4):
            at = int(row[b]) - base
            new[at : at + dist.size] += background[b] * dist
        dist, low = new, low + base
    survival = np.cumsum(dist[::-1])[::-1]  # P(score >= grid value)
    ok = np.flatnonzero(survival <= max_pvalue)
    maximum = float(lo.max(axis=1).sum())
    by_pvalue = (low + ok[0]) * step if ok.size else math.inf
    return float(min(by_pvalue, max_fraction * maximum))


def _codes(sequences: Sequence[str]) -> np.ndarray:
    """uint8 (N, L) codes 0..3 for A, C, G, T and 4 for N/ambiguous (equal lengths)."""
    x, _ = one_hot(sequences)
    return np.where(x.any(axis=-1), x.argmax(axis=-1), 4).astype(np.uint8)


def scan_motifs(
    sequences: Sequence[str],
    motifs: Sequence[str | Motif] | None = None,
    *,
    background: np.ndarray = HUMAN_BACKGROUND,
    pseudocount: float = 0.01,
    max_pvalue: float = 1e-5,
    max_fraction: float = 0.8,
) -> np.ndarray:
    """Homer-style per-base motif scores of equal-length DNA sequences.

    For each motif and start position, the log-odds score on the better strand; a start is
    a match where it reaches `score_threshold`. Each base gets the largest score of the
    matches covering it, 0 where none does. N and other ambiguity codes score as the worst
    base at that motif position, so a match never rests on an unknown base.

    Returns float32 (N, L).
    """
    background = np.asarray(background, dtype=np.float64)
    codes = _codes(sequences)
    n, length = codes.shape
    out = np.zeros((n, length), dtype=np.float32)
    for motif in _as_motifs(motifs):
        lo = log_odds(motif, background, pseudocount)
        w = lo.shape[0]
        if w > length:
            continue
        threshold = score_threshold(lo, background, max_pvalue, max_fraction)
        starts = length - w + 1
        best = np.full((n, starts), -np.inf)
        # minus strand: reverse-complement matrix scanned along the plus strand
        for mat in (lo, lo[::-1, ::-1]):
            mat5 = np.concatenate([mat, mat.min(axis=1, keepdims=True)], axis=1)
            s = np.zeros((n, starts))
            for j in range(w):
                s += mat5[j][codes[:, j : j + starts]]
            best = np.maximum(best, s)
        hit = np.where(best >= threshold - 1e-9, best, 0.0).astype(np.float32)
        for j in range(w):  # spread each match's score over the bases it covers
            np.maximum(out[:, j : j + starts], hit, out=out[:, j : j + starts])
    return out


# ----------------------------------------------------------------------------- simulator


class PlantedSite(NamedTuple):
    """One planted motif instance: window index, motif ID, 0-based start, '+' or '-'."""

    window: int
    motif_id: str
    start: int
    strand: str


def markov_background(cpg_ratio: float = 0.25, composition: np.ndarray = HUMAN_BACKGROUND) -> np.ndarray:
    """First-order transition matrix float64 (4, 4), rows = previous base, A, C, G, T.

    Dinucleotide frequencies start as p(x)p(y); CpG is scaled to `cpg_ratio` of that and the
    removed mass d moves CG->CA and TA->TG (f[CA] += d, f[TG] += d, f[TA] -= d), which keeps
    both marginals equal to `composition` (so it stays the stationary distribution) and
    keeps the model reverse-complement symmetric.
    """
    p = np.asarray(composition, dtype=np.float64)
    f = np.outer(p, p)
    d = (1.0 - cpg_ratio) * p[1] * p[2]
    f[1, 2] -= d
    f[1, 0] += d
    f[3, 2] += d
    f[3, 0] -= d
    return f / p[:, None]


# windows simulated per RNG stream; sets of at most this many are what the simulator always gave
SIMULATE_CHUNK = 10_000


def _simulate_chunk(
    rng: np.random.Generator,
    n_windows: int,
    length: int,
    chosen: list[Motif],
    first_window: int,
    *,
    mean_instances: float,
    cpg_ratio: float,
    pseudocount: float,
    max_pvalue: float,
    max_fraction: float,
    chrom: str,
    first_start: int,
) -> tuple[list[str], list[str], np.ndarray, list[PlantedSite]]:
    """`n_windows` windows from `rng`, numbered from `first_window` (names and planted
    window indices are global). Returns (names, sequences, scores float32 (n, L), planted)."""
    # background: Markov chain, vectorised over windows, position by position
    composition = HUMAN_BACKGROUND
    cum_t = np.cumsum(markov_background(cpg_ratio, composition), axis=1)[:, :3]
    codes = np.empty((n_windows, length), dtype=np.uint8)
    u = rng.random((n_windows, length))
    codes[:, 0] = (u[:, :1] > np.cumsum(composition)[:3]).sum(axis=1)
    for i in range(1, length):
        codes[:, i] = (u[:, i : i + 1] > cum_t[codes[:, i - 1]]).sum(axis=1)
    del u  # (n, L) float64, the largest array of a chunk; not needed from here on

    # planted instances: Poisson count per window, non-overlapping, either strand
    cum_f = [np.cumsum(m.frequencies, axis=1)[:, :3] for m in chosen]
    counts = rng.poisson(mean_instances, size=n_windows)
    planted: list[PlantedSite] = []
    for w_i in range(n_windows):
        taken = np.zeros(length, dtype=bool)
        for _ in range(counts[w_i]):
            k = int(rng.integers(len(chosen)))
            width = chosen[k].width
            for _attempt in range(20):
                start = int(rng.integers(length - width + 1))
                if not taken[start : start + width].any():
                    break
            else:
                continue  # window too crowded; skip this instance
            site = (rng.random((width, 1)) > cum_f[k]).sum(axis=1).astype(np.uint8)
            strand = "+" if rng.random() < 0.5 else "-"
            if strand == "-":
                site = 3 - site[::-1]  # reverse complement (A<->T, C<->G in ACGT order)
            codes[w_i, start : start + width] = site
            taken[start : start + width] = True
            planted.append(PlantedSite(first_window + w_i, chosen[k].id, start, strand))

    letters = np.frombuffer(BASES.encode(), dtype=np.uint8)[codes]
    sequences = [row.tobytes().decode() for row in letters]
    names = [
        f"{chrom}:{first_start + i * length}-{first_start + (i + 1) * length}"
        for i in range(first_window, first_window + n_windows)
    ]
    scores = scan_motifs(
        sequences,
        chosen,
        background=composition,
        pseudocount=pseudocount,
        max_pvalue=max_pvalue,
        max_fraction=max_fraction,
    )
    return names, sequences, scores, planted


def iter_simulated_tf_binding(
    n_windows: int,
    length: int = 300,
    seed: int = 0,
    motifs: Sequence[str | Motif] | None = None,
    *,
    chunk: int = SIMULATE_CHUNK,
    mean_instances: float = 1.5,
    cpg_ratio: float = 0.25,
    pseudocount: float = 0.01,
    max_pvalue: float = 1e-5,
    max_fraction: float = 0.8,
    chrom: str = "chr22sim",
    first_start: int = 16_000_000,
) -> Iterator[tuple[list[str], list[str], np.ndarray, list[PlantedSite]]]:
    """`simulate_tf_binding`'s windows, `chunk` at a time, so that large sets never sit in memory.

    Yields (names, sequences, scores float32 (n, L), planted) for n = `chunk` windows (the
    last chunk: the rest). Chunk 0 draws from `np.random.default_rng(seed)`, the stream the
    simulator has always used, so a set of at most `chunk` windows is the same, bit for bit,
    as before chunking; chunk c > 0 draws from its own stream `default_rng([seed, c])`.
    Window names (tiled starts along `chrom`) and planted window indices are global: they
    continue across chunks. Arguments are checked here, before the first chunk is asked for.
    """
    if n_windows < 1:
        raise InputError(f"simulate_tf_binding: n_windows must be at least 1, got {n_windows}")
    if chunk < 1:
        raise InputError(f"simulate_tf_binding: chunk must be at least 1, got {chunk}")
    chosen = _as_motifs(motifs)
    widest = max(m.width for m in chosen)
    if length < widest:
        raise InputError(f"simulate_tf_binding: length {length} is shorter than the widest motif ({widest} bp)")
    settings = dict(
        mean_instances=mean_instances, cpg_ratio=cpg_ratio, pseudocount=pseudocount, max_pvalue=max_pvalue,
        max_fraction=max_fraction, chrom=chrom, first_start=first_start,
    )

    def chunks():
        for c, first in enumerate(range(0, n_windows, chunk)):
            # chunk 0 keeps the historical stream; [seed, c] streams are independent of it
            rng = np.random.default_rng(seed if c == 0 else [seed, c])
            yield _simulate_chunk(rng, min(chunk, n_windows - first), length, chosen, first, **settings)

    return chunks()


def simulate_tf_binding(
    n_windows: int,
    length: int = 300,
    seed: int = 0,
    motifs: Sequence[str | Motif] | None = None,
    *,
    chunk: int = SIMULATE_CHUNK,
    mean_instances: float = 1.5,
    cpg_ratio: float = 0.25,
    pseudocount: float = 0.01,
    max_pvalue: float = 1e-5,
    max_fraction: float = 0.8,
    chrom: str = "chr22sim",
    first_start: int = 16_000_000,
) -> tuple[list[str], list[str], np.ndarray, list[PlantedSite]]:
    """Simulated windows in the course's format (see the module docstring).

    motifs: None for all bundled JASPAR matrices, or IDs / names / `Motif` objects.
    Returns (names, sequences, scores float32 (N, L), planted). `planted` lists every
    instance put into the DNA (window index, motif ID, 0-based start, strand); scores come
    from `scan_motifs` on the sequences alone, not from `planted`. The chunks of
    `iter_simulated_tf_binding` joined: the same windows as before chunking for N <= `chunk`;
    for large N write the chunks with `write_tf_binding_chunks` instead of holding them.
    """
    names: list[str] = []
    sequences: list[str] = []
    scores: list[np.ndarray] = []
    planted: list[PlantedSite] = []
    for chunk_names, chunk_sequences, chunk_scores, chunk_planted in iter_simulated_tf_binding(
        n_windows, length, seed, motifs, chunk=chunk, mean_instances=mean_instances, cpg_ratio=cpg_ratio,
        pseudocount=pseudocount, max_pvalue=max_pvalue, max_fraction=max_fraction, chrom=chrom,
        first_start=first_start,
    ):
        names += chunk_names
        sequences += chunk_sequences
        scores.append(chunk_scores)
        planted += chunk_planted
    return names, sequences, scores[0] if len(scores) == 1 else np.concatenate(scores), planted


# ----------------------------------------------------------------------------- files


@dataclasses.dataclass(frozen=True, eq=False)
class TFBindingData:
    """Windows read from a sequences file and a scores file, in the sequences file's order.

    x: float32 (N, L, 4) one-hot A, C, G, T (channels last, Flax layout).
    y: float32 (N, L) per-base scores, matched to `names` by window name.
    source: (sequences file, scores file).
    """

    names: list[str]
    sequences: list[str]
    x: np.ndarray
    y: np.ndarray
    source: tuple[str, str]

    def __len__(self) -> int:
        return len(self.names)


def _opener(path: Path):
    return gzip.open if path.name.endswith(".gz") else open


def _check_file(path: Path, what: str) -> None:
    if path.is_dir():
        raise InputError(f"{path}: is a folder, expected the {what} file")
    if not path.exists():
        raise InputError(f"{path}: no such file ({what})")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: file is empty ({what})")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _few(items: Sequence[str], k: int = 3) -> str:
    shown = ", ".join(f"'{s}'" for s in items[:k])
    return shown + (f" and {len(items) - k} more" if len(items) > k else "")


def _read_tsv(path: Path, **kwargs) -> pd.DataFrame:
    compression = "gzip" if path.name.endswith(".gz") else None
    try:
        return pd.read_csv(path, sep="\t", compression=compression, **kwargs)
    except pd.errors.EmptyDataError:
        raise InputError(f"{path}: file is empty") from None
    except _READ_ERRORS as err:
        raise InputError(f"{path}: not a readable tab-separated file ({_first_line(err)})") from None


def _header(path: Path) -> list[str]:
    try:
        with _opener(path)(path, "rt", encoding="utf-8-sig") as handle:
            line = handle.readline()
    except _READ_ERRORS as err:
        raise InputError(f"{path}: not a readable tab-separated file ({_first_line(err)})") from None
    if not line.strip():
        raise InputError(f"{path}: file is empty (no header line)")
    return [field.strip() for field in line.rstrip("\r\n").split("\t")]


def _is_index(values: pd.Series, n_rows: int) -> bool:
    """A column holding 0..n-1 (or 1..n): the row index pandas writes with index=True."""
    numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
    if n_rows == 0 or not np.isfinite(numbers).all():
        return False
    return bool(np.array_equal(numbers, np.arange(n_rows)) or np.array_equal(numbers, np.arange(1, n_rows + 1)))


def read_windows(path: str | os.PathLike) -> tuple[list[str], list[str], np.ndarray]:
    """Windows to score: the study's sequences TSV(.gz) (window_name, sequence) or FASTA
    (.fa/.fasta/.fna/.fas, optionally .gz; the record ids name the windows).

    Returns (names, sequences, x) with x float32 (N, L, 4) one-hot. Missing columns, empty
    or duplicate names, unknown characters and unequal lengths are InputErrors naming the
    file and the window.
    """
    path = Path(path)
    _check_file(path, "sequences")
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    if suffixes and suffixes[-1] in FASTA_SUFFIXES:
        records = read_fasta(path)
        names, sequences = [n.split()[0] for n in records.names], records.sequences
    else:
        frame = _read_tsv(path, dtype=str, keep_default_na=False)
        frame.columns = [str(c).strip() for c in frame.columns]
        missing = [c for c in SEQ_COLUMNS if c not in frame.columns]
        if missing:
            raise InputError(
                f"{path}: no column{'s' if len(missing) > 1 else ''} {_few(missing)} "
                f"(columns: {', '.join(map(str, frame.columns))}); "
                f"expected tab-separated window_name and sequence, or FASTA"
            )
        if len(frame) == 0:
            raise InputError(f"{path}: no rows after the header")
        names = [s.strip() for s in frame["window_name"].astype(str)]
        sequences = [s.strip() for s in frame["sequence"].astype(str)]
        if "" in names:
            raise InputError(f"{path}: line {names.index('') + 2}: empty window_name")
    dup = pd.Series(names)[pd.Series(names).duplicated()].unique().tolist()
    if dup:
        raise InputError(f"{path}: duplicate window names {_few(dup)}")
    # names the window for unknown characters, empty or unequal-length sequences
    x, _ = one_hot(sequences, names=names, source=str(path))
    return names, sequences, x


def read_tf_binding(sequences_path: str | os.PathLike, scores_path: str | os.PathLike) -> TFBindingData:
    """Read the course's sequences and scores files (see the module docstring).

    Every problem is an `InputError` naming the file and the problem: missing or empty
    files, missing columns, duplicate window names, windows without scores or scores
    without windows, unequal sequence lengths, unknown bases, a number of score rows other
    than the sequence length, and non-numeric, NaN or infinite scores.
    """
    seq_path, score_path = Path(sequences_path), Path(scores_path)
    _check_file(seq_path, "sequences")
    _check_file(score_path, "scores")
    names, sequences, x = read_windows(seq_path)
    length = x.shape[1]

    # --- scores: header read by hand, since pandas renames duplicate columns ('w' -> 'w.1')
    header = _header(score_path)
    y = _read_scores_fast(score_path, header, names, length)
    if y is None:  # something is unusual: pandas reads it and names the problem
        y = _read_scores_table(score_path, seq_path, header, names, length)
    return TFBindingData(names, sequences, x, y, (str(seq_path), str(score_path)))


# a scores row of plain decimal numbers only (no quotes, spaces, NaN, inf, '_' or non-ASCII
# digits, which Python's float() accepts but pandas does not)
_PLAIN_NUMBERS = re.compile(r"[0-9eE+\-.\t]*")


def _read_scores_fast(path: Path, header: list[str], names: list[str], length: int) -> np.ndarray | None:
    """Scores float32 (N, L), in `names` order, of a well-formed scores file, read one row
    (base) at a time with numpy: wide files (one column per window) are slow and large
    through pandas. None for anything unusual (a leading column that is neither a window
    nor a row index, missing, extra or repeated columns, a row count other than `length`,
    unequal rows, text other than plain finite numbers, unreadable bytes); the pandas path
    then reads the file and reports the problem with its usual message.
    """
    known = set(names)
    lead = header[0] not in known  # perhaps a row index, as pandas writes with index=True
    columns = header[1:] if lead else header
    position = {c: j for j, c in enumerate(columns)}
    if len(position) != len(columns) or position.keys() != known:
        return None
    order = np.fromiter((position[n] for n in names), dtype=np.intp, count=len(names))
    y = np.empty((len(names), length), dtype=np.float32)
    index = np.empty(length)
    rows = 0
    try:
        with _opener(path)(path, "rt", encoding="utf-8-sig", newline="") as handle:
            handle.readline()  # the header, read by `_header`
            for line in handle:
                text = line.rstrip("\r\n")
                if rows == length or not _PLAIN_NUMBERS.fullmatch(text):
                    return None
                fields = text.split("\t")
                if len(fields) != len(header):
                    return None
                try:
                    row = np.array(fields, dtype=np.float64)
                except ValueError:  # '', '1e', '1.2.3'
                    return None
                if not np.isfinite(row).all():
                    return None
                if lead:
                    index[rows], row = row[0], row[1:]
                y[:, rows] = row[order]
                rows += 1
    except _READ_ERRORS:
        return None
    if rows != length:
        return None
    if lead and not (np.array_equal(index, np.arange(length)) or np.array_equal(index, np.arange(1, length + 1))):
        return None
    return y


def _read_scores_table(
    score_path: Path, seq_path: Path, header: list[str], names: list[str], length: int
) -> np.ndarray:
    """Scores float32 (N, L) in `names` order, read with pandas; every problem an InputError."""
    table = _read_tsv(score_path, header=0)
    if table.shape[1] != len(header):
        raise InputError(
            f"{score_path}: the header has {len(header)} fields but rows have {table.shape[1]}"
        )
    dup = pd.Series(header)[pd.Series(header).duplicated()].unique().tolist()
    if dup:
        raise InputError(f"{score_path}: duplicate window columns {_few(dup)}")
    table.columns = header
    known = set(names)
    if header[0] not in known and _is_index(table.iloc[:, 0], len(table)):
        table = table.iloc[:, 1:]  # a leading row index, not a window
    if table.shape[1] == 0 or len(table) == 0:
        raise InputError(f"{score_path}: no score values (expected one column per window, one row per base)")
    columns = list(table.columns)
    have = set(columns)  # once: a set per name made wide files quadratic
    no_scores = [n for n in names if n not in have]
    if no_scores:
        raise InputError(
            f"{score_path}: no score column for {len(no_scores)} window(s) of {seq_path.name}: "
            f"{_few(no_scores)}"
        )
    extra = [c for c in columns if c not in known]
    if extra:
        raise InputError(
            f"{score_path}: score column(s) {_few(extra, 5)} have no sequence in {seq_path.name}"
        )
    if len(table) != length:
        raise InputError(
            f"{score_path}: {len(table)} rows (bases) but the sequences in {seq_path.name} are {length} bp"
        )
    table = table[names]
    for name in names:  # non-numeric cells make a column 'object'; find the first one
        column = table[name]
        if not pd.api.types.is_numeric_dtype(column):
            numbers = pd.to_numeric(column, errors="coerce")
            bad = np.flatnonzero(numbers.isna().to_numpy() & column.notna().to_numpy())
            if bad.size:
                raise InputError(
                    f"{score_path}: window '{name}', position {bad[0] + 1}: score "
                    f"'{str(column.iloc[bad[0]])[:20]}' is not a number"
                )
            table[name] = numbers
    y = table.to_numpy(dtype=np.float64).T  # (N, L) in sequence-file order
    finite = np.isfinite(y)
    if not finite.all():
        row, pos = (int(v) for v in np.argwhere(~finite)[0])
        kind = "missing or NaN" if np.isnan(y[row, pos]) else "infinite"
        raise InputError(f"{score_path}: window '{names[row]}', position {pos + 1}: score is {kind}")
    return y.astype(np.float32)


# gzip written by zlib (header with mtime 0: the same data gives the same bytes), as
# gzip.compress(data, mtime=0) does on Python 3.11, but fixed across Python versions
_GZIP_LEVEL, _GZIP_WBITS = 9, 31


def _write_text(path: Path, text: str) -> None:
    data = text.encode("utf-8")
    if path.name.endswith(".gz"):
        data = zlib.compress(data, level=_GZIP_LEVEL, wbits=_GZIP_WBITS)
    path.write_bytes(data)


def _checked_windows(
    what: str, names: Sequence[str], sequences: Sequence[str], scores: np.ndarray
) -> tuple[list[str], list[str], np.ndarray]:
    """Names and sequences as str, scores float64 (N, L); InputError unless they fit the format."""
    names, sequences = [str(n) for n in names], [str(s) for s in sequences]
    scores = np.asarray(scores, dtype=np.float64)
    if len(names) != len(sequences):
        raise InputError(f"{what}: {len(names)} names but {len(sequences)} sequences")
    if len(set(names)) != len(names):
        raise InputError(f"{what}: window names must be unique")
    if any(not n or any(c in n for c in "\t\r\n") for n in names):
        raise InputError(f"{what}: window names must be non-empty without tabs or newlines")
    lengths = {len(s) for s in sequences}
    if len(lengths) != 1 or scores.shape != (len(names), lengths.pop()):
        raise InputError(
            f"{what}: scores have shape {scores.shape}; expected (windows, sequence length) "
            f"with all sequences of one length"
        )
    return names, sequences, scores


def _sequences_text(names: list[str], sequences: list[str], header: bool = True) -> str:
    table = pd.DataFrame({"window_name": names, "sequence": sequences})
    return table.to_csv(sep="\t", index=False, header=header, lineterminator="\n")


def _scores_text(names: list[str], scores: np.ndarray) -> str:
    """scores (N, L) as the study's table: header of names, then one row per base."""
    table = pd.DataFrame(np.asarray(scores, np.float64).T, columns=[str(n) for n in names])
    return table.to_csv(sep="\t", index=False, float_format="%.6g", lineterminator="\n")


def _scores_columns_text(names: list[str], scores: np.ndarray) -> str:
    """`_scores_text` (same text) for finite scores (N, L), about ten times faster: each
    distinct value is formatted once, since a match repeats its score over its bases and
    most bases score 0 (pandas formats every cell)."""
    header = pd.DataFrame(columns=names).to_csv(sep="\t", index=False, lineterminator="\n")  # quoting as pandas
    values, codes = np.unique(scores.T, return_inverse=True)  # over (L, N): rows are bases
    text = np.array(["%.6g" % v for v in values], dtype=object)[codes.reshape(scores.shape[::-1])]
    return header + "".join("\t".join(row) + "\n" for row in text)


def write_tf_binding(
    path_sequences: str | os.PathLike,
    path_scores: str | os.PathLike,
    names: Sequence[str],
    sequences: Sequence[str],
    scores: np.ndarray,
) -> None:
    """Write the two files `read_tf_binding` reads (gzip where a path ends in .gz).

    names, sequences: N each; scores: (N, L) with L the sequence length. The scores file
    gets one column per window, in `names` order, and no index column. For sets too large
    to hold, `write_tf_binding_chunks` writes the same bytes from chunks.
    """
    names, sequences, scores = _checked_windows("write_tf_binding", names, sequences, scores)
    _write_text(Path(path_sequences), _sequences_text(names, sequences))
    write_scores(path_scores, names, scores)


# chunk files open at once while merging scores columns; more are merged in rounds
_MERGE_FILES = 128


def _temp_path(final: Path, tag: str) -> Path:
    """An unused name beside `final` (same filesystem, so os.replace is atomic)."""
    return final.with_name(f".{final.name}.{tag}-{os.getpid()}-{uuid.uuid4().hex[:12]}.tmp")


class _GzipOut:
    """Bytes to a gzip stream with the same header and deflate settings as `_write_text`."""

    def __init__(self, raw):
        self.raw, self.deflate = raw, zlib.compressobj(_GZIP_LEVEL, zlib.DEFLATED, _GZIP_WBITS)

    def write(self, data: bytes) -> None:
        self.raw.write(self.deflate.compress(data))

    def finish(self) -> None:
        self.raw.write(self.deflate.flush())


@contextlib.contextmanager
def _binary_writer(path: Path, gz: bool):
    """A new file for bytes, gzip-compressed (when `gz`) to the bytes `_write_text` gives
    for the whole text: deflate's output does not depend on how the input is split."""
    with open(path, "xb") as raw:
        if not gz:
            yield raw
            return
        out = _GzipOut(raw)
        yield out
        out.finish()


def _merge_columns(parts: Sequence[Path], out) -> None:
    """Line i of `out` = line i of every part joined by tabs (parts have equal line counts),
    holding one line of each part at a time."""
    with contextlib.ExitStack() as stack:
        handles = [stack.enter_context(open(part, "rb")) for part in parts]
        for lines in zip(*handles):
            out.write(b"\t".join(line.rstrip(b"\n") for line in lines) + b"\n")


def write_tf_binding_chunks(
    path_sequences: str | os.PathLike,
    path_scores: str | os.PathLike,
    chunks: Iterable[tuple],
) -> int:
    """`write_tf_binding` for windows that come in chunks, never holding more than a chunk.

    chunks: (names, sequences, scores (n, L), ...) each, e.g. `iter_simulated_tf_binding`'s
    (items after the third, such as planted sites, are ignored); names unique over all
    chunks, one sequence length L throughout. The bytes equal those of `write_tf_binding`
    on all chunks joined. The scores file has one column per window, so each chunk's columns
    go to a temporary file and the files are then joined line by line. Both files appear
    only when complete (written beside their final names, then renamed); temporary files
    are removed also when a chunk or a write fails. Returns the number of windows written.
    """
    seq_path, score_path = Path(path_sequences), Path(path_scores)
    seq_tmp, score_tmp = _temp_path(seq_path, "part"), _temp_path(score_path, "part")
    work = _temp_path(score_path, "columns")
    done = False
    seen: set[str] = set()  # only names are kept for all windows: duplicates make unreadable files
    parts: list[Path] = []
    length = None
    try:
        work.mkdir()
        with _binary_writer(seq_tmp, seq_path.name.endswith(".gz")) as seq_out:
            for chunk in chunks:
                names, sequences, scores = chunk[0], chunk[1], chunk[2]
                if len(names) == 0:
                    continue
                names, sequences, scores = _checked_windows("write_tf_binding_chunks", names, sequences, scores)
                if length is not None and scores.shape[1] != length:
                    raise InputError(
                        f"write_tf_binding_chunks: chunk {len(parts)} has {scores.shape[1]} bp windows, "
                        f"earlier chunks {length} bp"
                    )
                length = scores.shape[1]
                clash = seen.intersection(names)
                if clash:
                    raise InputError(f"write_tf_binding_chunks: window names must be unique; repeated: {_few(sorted(clash))}")
                seen.update(names)
                seq_out.write(_sequences_text(names, sequences, header=not parts).encode("utf-8"))
                part = work / f"{len(parts):06d}.tsv"
                part.write_bytes(_scores_columns_text(names, scores).encode("utf-8"))
                parts.append(part)
        if not parts:
            raise InputError("write_tf_binding_chunks: no windows to write")
        rounds = 0
        while len(parts) > _MERGE_FILES:  # bounded open files: merge groups into wider parts
            rounds, merged = rounds + 1, []
            for g in range(0, len(parts), _MERGE_FILES):
                group = parts[g : g + _MERGE_FILES]
                target = work / f"merged-{rounds}-{len(merged):06d}.tsv"
                with open(target, "xb") as out:
                    _merge_columns(group, out)
                for part in group:
                    part.unlink()
                merged.append(target)
            parts = merged
        with _binary_writer(score_tmp, score_path.name.endswith(".gz")) as score_out:
            _merge_columns(parts, score_out)
        os.replace(seq_tmp, seq_path)
        os.replace(score_tmp, score_path)
        done = True
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if not done:
            for tmp in (seq_tmp, score_tmp):
                tmp.unlink(missing_ok=True)
    return len(seen)


def write_scores(path: str | os.PathLike, names: Sequence[str], scores: np.ndarray) -> None:
    """The study's scores file: one column per window (named, in `names` order), one row per
    base, no index column (gzip where the path ends in .gz). scores (N, L)."""
    _write_text(Path(path), _scores_text(names, scores))
