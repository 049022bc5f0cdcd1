"""Variant effects: score the reference and alternate windows of SNVs with any model.

Input: a VCF (plain or gzip/bgzip; '#' header lines; columns CHROM POS ID REF ALT ...) or
a tab-separated table with a header naming the columns chrom, pos (1-based), ref, alt and
optionally id (other columns ignored; a leading '#' on the header is allowed). A file is a
VCF when its name ends in .vcf, .vcf.gz or .vcf.bgz or its first line starts with
'##fileformat=VCF' or '#CHROM'.

- One row per ALT allele: "A,T" gives two rows, in the order written.
- ID '.' (missing), and a table without an id column, give an empty id: no identifier is
  invented, since chrom, pos, ref and alt are in every row anyway.
- Reading streams: chunks of `CHUNK` alleles, so memory does not grow with the file.

Status of each allele, decided in this order (one output row per input allele, in input
order; only `ok` rows are scored, the others have empty scores):
  not_snv          REF or ALT is not one base A/C/G/T (any case): indels, MNVs, symbolic
                   alleles such as <DEL>, '*', '.', N.
  unknown_contig   CHROM is not in the FASTA, with or without a 'chr' prefix.
  near_contig_end  POS is past the contig's end (no genome base to check).
  ref_mismatch     REF differs from the genome's base at POS (which is written in the
                   `genome_ref` column: a wrong genome build shows at once).
  near_contig_end  the window centered on POS runs past a contig end (no N padding: the
                   models never saw padded windows; see `molml_jax.interpret.genome`).
  ok               scored.

Output TSV (gzip when its name ends in .gz), written to a temporary file and renamed when
complete, so a failure leaves nothing: chrom, pos, id, ref, alt (as in the input),
ref_score, alt_score, delta (= alt_score - ref_score), status, genome_ref (the FASTA's base
at POS whenever the contig and position exist). For a score that returns a track per base
(B, length), ref_score and alt_score are the sums of the tracks over the window, and
max_abs_delta_per_base (max over positions of |alt track - ref track|) follows delta.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

import numpy as np

from molml_jax.data.dna import BASES, one_hot
from molml_jax.errors import InputError
from molml_jax.interpret._io import (
    PER_BASE, READ_ERRORS, WINDOW, Score, atomic_table, batches, check_file, few, first_line, number, open_text, run_score,
)
from molml_jax.interpret.genome import Genome, window_start

CHUNK = 10_000
OK, NOT_SNV, UNKNOWN_CONTIG, REF_MISMATCH, NEAR_CONTIG_END = (
    "ok", "not_snv", "unknown_contig", "ref_mismatch", "near_contig_end")
STATUSES = (OK, NOT_SNV, UNKNOWN_CONTIG, REF_MISMATCH, NEAR_CONTIG_END)
TSV_REQUIRED = ("chrom", "pos", "ref", "alt")
VCF_SUFFIXES = (".vcf", ".vcf.gz", ".vcf.bgz")
_SNV = frozenset("ACGTacgt")
_EYE = np.eye(4, dtype=np.float32)


class Variant(NamedTuple):
    """One ALT allele of one input line. pos is 1-based as in the file; line is the
    1-based line number in the file; ref and alt as written."""

    chrom: str
    pos: int
    id: str
    ref: str
    alt: str
    line: int


# ----------------------------------------------------------------------------- reading


def read_variants(path: str | os.PathLike, *, chunk_size: int = CHUNK) -> Iterator[list[Variant]]:
    """Alleles of a VCF or variant table, in file order, as lists of up to `chunk_size`.

    The file is read lazily as the chunks are taken. A malformed line (too few columns,
    POS not an integer >= 1, empty REF or ALT) is an `InputError` "FILE: line K: problem".
    """
    path = Path(path)
    check_file(path, "variants")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return batches(_alleles(path), chunk_size)


def _alleles(path: Path) -> Iterator[Variant]:
    try:
        with open_text(path) as handle:
            lines = enumerate(handle, start=1)
            first = next(lines, None)
            if first is None:  # gzip of nothing
                raise InputError(f"{path}: file is empty (variants)")
            rest = itertools.chain([first], lines)
            if _is_vcf(path, first[1]):
                yield from _vcf_alleles(path, rest)
            else:
                yield from _table_alleles(path, rest)
    except READ_ERRORS as err:
        raise InputError(f"{path}: not a readable VCF or variant table ({first_line(err)})") from None


def _is_vcf(path: Path, first: str) -> bool:
    return path.name.lower().endswith(VCF_SUFFIXES) or first.startswith(("##fileformat=VCF", "#CHROM"))


def _vcf_alleles(path: Path, lines: Iterable[tuple[int, str]]) -> Iterator[Variant]:
    for lineno, text in lines:
        text = text.rstrip("\r\n")
        if not text.strip() or text.startswith("#"):
            continue
        fields = text.split("\t", 5)
        if len(fields) < 5:
            hint = " (columns must be separated by tabs)" if " " in text else ""
            raise InputError(f"{path}: line {lineno}: {len(fields)} column(s), a VCF record needs at least 5 "
                             f"(CHROM POS ID REF ALT){hint}")
        chrom, pos, vid, ref, alt = (f.strip() for f in fields[:5])
        yield from _split_alleles(path, lineno, chrom, pos, vid, ref, alt)


def _table_alleles(path: Path, lines: Iterable[tuple[int, str]]) -> Iterator[Variant]:
    lines = iter(lines)
    _, header = next(lines)
    columns = [c.strip().lower() for c in header.rstrip("\r\n").split("\t")]
    columns[0] = columns[0].lstrip("#").strip()
    missing = [c for c in TSV_REQUIRED if c not in columns]
    if missing:
        raise InputError(
            f"{path}: line 1: no column {', '.join(repr(c) for c in missing)} (columns: {', '.join(columns)}); "
            f"a variant table needs a tab-separated header with chrom, pos (1-based), ref, alt and optionally id, "
            f"or a VCF")
    at = [columns.index(c) for c in TSV_REQUIRED]
    at_id = columns.index("id") if "id" in columns else None
    needed = max(at + [at_id or 0]) + 1
    for lineno, text in lines:
        text = text.rstrip("\r\n")
        if not text.strip():
            continue
        fields = text.split("\t")
        if len(fields) < needed:
            raise InputError(f"{path}: line {lineno}: {len(fields)} column(s), the header has {len(columns)}")
        chrom, pos, ref, alt = (fields[i].strip() for i in at)
        vid = fields[at_id].strip() if at_id is not None else ""
        yield from _split_alleles(path, lineno, chrom, pos, vid, ref, alt)


def _split_alleles(path: Path, lineno: int, chrom: str, pos: str, vid: str, ref: str, alt: str) -> Iterator[Variant]:
    where = f"{path}: line {lineno}"
    if not chrom:
        raise InputError(f"{where}: empty CHROM")
    try:
        position = int(pos)
    except ValueError:
        raise InputError(f"{where}: POS '{pos}' is not an integer") from None
    if position < 1:
        raise InputError(f"{where}: POS {position} is not >= 1 (positions are 1-based)")
    if not ref:
        raise InputError(f"{where}: empty REF")
    alts = alt.split(",")
    if not all(alts):
        raise InputError(f"{where}: empty ALT allele in '{alt}'")
    vid = "" if vid == "." else vid
    for allele in alts:
        yield Variant(chrom, position, vid, ref, allele, lineno)


# ----------------------------------------------------------------------------- checking


@dataclasses.dataclass
class Checked:
    """A variant's status; genome_ref the FASTA's base at POS ('' when unknown); window the
    REF window (str, `length` bases) of an ok variant, else None."""

    status: str
    genome_ref: str = ""
    window: str | None = None
    contig: str | None = None


def check_variant(variant: Variant, genome: Genome, length: int) -> Checked:
    """The status of one allele (module docstring) and, when ok, its REF window."""
    contig = genome.resolve(variant.chrom)
    if len(variant.ref) != 1 or len(variant.alt) != 1 or variant.ref not in _SNV or variant.alt not in _SNV:
        return Checked(NOT_SNV, contig=contig)
    if contig is None:
        return Checked(UNKNOWN_CONTIG)
    center = variant.pos - 1
    if center >= genome.lengths[contig]:
        return Checked(NEAR_CONTIG_END, contig=contig)
    window = genome.window(contig, center, length)
    base = window[length // 2] if window is not None else genome.fetch(contig, center, center + 1)
    if base != variant.ref.upper():
        return Checked(REF_MISMATCH, base, contig=contig)
    if window is None:
        return Checked(NEAR_CONTIG_END, base, contig=contig)
    return Checked(OK, base, window, contig)


# ----------------------------------------------------------------------------- scoring


def allele_windows(variants: list[Variant], checked: list[Checked], length: int, source: str) -> tuple[np.ndarray, np.ndarray]:
    """One-hot REF and ALT windows, each float32 (n, length, 4), of ok alleles: the ALT
    window is the REF window with the ALT base at index length // 2."""
    starts = [window_start(v.pos - 1, length) for v in variants]
    names = [f"window {c.contig}:{s + 1}-{s + length} (line {v.line})" for v, c, s in zip(variants, checked, starts)]
    ref, _ = one_hot([c.window for c in checked], names=names, source=source)
    alt = ref.copy()
    alt[:, length // 2, :] = _EYE[[BASES.index(v.alt.upper()) for v in variants]]
    return ref, alt


def _score_ok(variants, checked, score, length, batch_size, kind, source) -> tuple[dict[int, dict[str, str]], str | None]:
    """Scores of a chunk's ok alleles, {index in chunk: {column: text}}, and the score's kind.
    Each call of `score` gets 2n windows (n <= batch_size): the n REF then the n ALT."""
    ok = [i for i, c in enumerate(checked) if c.status == OK]
    scored: dict[int, dict[str, str]] = {}
    for begin in range(0, len(ok), batch_size):
        index = ok[begin:begin + batch_size]
        ref, alt = allele_windows([variants[i] for i in index], [checked[i] for i in index], length, source)
        out, kind = run_score(score, np.concatenate([ref, alt]), kind)
        ref_out, alt_out = out[:len(index)], out[len(index):]
        if kind == PER_BASE:
            ref_value, alt_value = ref_out.sum(axis=1), alt_out.sum(axis=1)
            per_base = np.abs(alt_out - ref_out).max(axis=1)
        else:
            ref_value, alt_value, per_base = ref_out, alt_out, None
        for k, i in enumerate(index):
            values = {"ref_score": number(ref_value[k]), "alt_score": number(alt_value[k]),
                      "delta": number(alt_value[k] - ref_value[k])}
            if per_base is not None:
                values["max_abs_delta_per_base"] = number(per_base[k])
            scored[i] = values
    return scored, kind


def output_columns(kind: str) -> list[str]:
    """The output TSV's columns for a score of `kind` (WINDOW or PER_BASE)."""
    extra = ["max_abs_delta_per_base"] if kind == PER_BASE else []
    return ["chrom", "pos", "id", "ref", "alt", "ref_score", "alt_score", "delta", *extra, "status", "genome_ref"]


def score_variants(
    variants_path: str | os.PathLike,
    genome_path: str | os.PathLike,
    score: Score,
    length: int,
    output: str | os.PathLike,
    *,
    batch_size: int = 256,
    chunk_size: int = CHUNK,
) -> dict:
    """Score every SNV of a VCF/table: REF and ALT windows of `length` bp centered on it.

    Args:
      score: one-hot windows float32 (B, length, 4) (A, C, G, T; N a zero row) -> np.ndarray
        (B,) (one value per window, e.g. a logit) or (B, length) (a track per base). Each
        call gets the REF windows of up to `batch_size` alleles followed by their ALT
        windows, so B <= 2 * batch_size (pad inside `score` for a fixed compiled shape).
      length: the model's window length.
      output: the TSV to write (module docstring for its columns).

    Returns {'rows': alleles written, 'status': {status: count}, 'score': 'window' or
    'per_base' (None when nothing was scored), 'chr_prefix_matched': bool, 'renamed':
    {variant contig: FASTA name} for the contigs matched through the 'chr' prefix}.

    Raises `InputError` for a bad file, and when there are variants but no contig of theirs
    is in the FASTA (naming a few contigs of each); nothing is written then.
    """
    if length < 1 or batch_size < 1:
        raise ValueError(f"length and batch_size must be >= 1, got {length} and {batch_size}")
    chunks = read_variants(variants_path, chunk_size=chunk_size)
    counts = dict.fromkeys(STATUSES, 0)
    unmatched: dict[str, None] = {}
    matched_any, kind = False, None
    with Genome(genome_path) as genome, atomic_table(output) as table:
        for chunk in chunks:
            checked = [check_variant(v, genome, length) for v in chunk]
            scored, kind = _score_ok(chunk, checked, score, length, batch_size, kind, str(genome.path))
            if kind is not None and table.columns is None:
                table.header(output_columns(kind))
            rows = []
            for i, (v, c) in enumerate(zip(chunk, checked)):
                counts[c.status] += 1
                if c.contig is not None:
                    matched_any = True
                else:
                    unmatched[v.chrom] = None  # distinct names: a few hundred at most
                rows.append({"chrom": v.chrom, "pos": str(v.pos), "id": v.id, "ref": v.ref, "alt": v.alt,
                             **scored.get(i, {}), "status": c.status, "genome_ref": c.genome_ref})
            table.write(rows)
        if sum(counts.values()) and not matched_any:
            raise InputError(f"{genome.path}: no sequence name matches a contig of {variants_path}, with or "
                             f"without a 'chr' prefix (FASTA: {few(genome.names)}; variants: {few(unmatched)})")
        if table.columns is None:
            table.header(output_columns(WINDOW))
    return {"rows": sum(counts.values()), "status": counts, "score": kind,
            "chr_prefix_matched": genome.prefix_matched, "renamed": dict(genome.renamed)}
