"""Genomic input for scoring (molml_jax.interpret: genome, variants, intervals) against a tiny
hand-written FASTA, VCF/TSV and BED/narrowPeak, with a linear fake model whose every score
is computed by hand from the window's bases."""

from __future__ import annotations

import gzip
import os

import numpy as np
import pandas as pd
import pytest

from molml_jax.errors import InputError
from molml_jax.interpret.genome import Genome, window_start
from molml_jax.interpret.intervals import interval_windows, read_intervals, score_intervals
from molml_jax.interpret.variants import check_variant, read_variants, score_variants

# 40 + 30 + 12 bases; lower case in chr1 (soft-masked) comes back upper case
CHR1 = "ACGTACGTACGGCCTTAAGGATATCGCGTACCGGTTAACC"
CHR2 = "TTTTTGGGGGCCCCCAAAAAACGTNACGTA"
CHRX = "GGGGAAAACCCC"
FASTA = (">chr1 first contig\nACGTACGTAC\nGGCCTTAAGG\natatcgcgta\nCCGGTTAACC\n"
         ">chr2\nTTTTTGGGGGCCCCCAAAAAACGTNACGTA\n>X\nGGGGAAAACCCC\n")
VALUE = {"A": 1, "C": 2, "G": 3, "T": 4, "N": 0}
LENGTH = 5


def linear(x: np.ndarray) -> np.ndarray:
    """Fake model, (B, L, 4) -> (B,): sum over positions l of (l + 1) * value(base)."""
    weights = np.arange(1, x.shape[1] + 1)[:, None] * np.arange(1, 5)[None, :]
    return (x * weights).sum(axis=(1, 2))


def linear_track(x: np.ndarray) -> np.ndarray:
    """Fake model, (B, L, 4) -> (B, L): (l + 1) * value(base) at each position."""
    weights = np.arange(1, x.shape[1] + 1)[:, None] * np.arange(1, 5)[None, :]
    return (x * weights).sum(axis=2)


def by_hand(window: str) -> int:
    """`linear` of one window string, written out."""
    return sum((i + 1) * VALUE[b] for i, b in enumerate(window))


def decode(x: np.ndarray) -> list[str]:
    return ["".join("ACGT"[row.argmax()] if row.any() else "N" for row in w) for w in x]


def read_tsv(path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)


@pytest.fixture
def fasta(tmp_path):
    path = tmp_path / "genome.fa"
    path.write_text(FASTA)
    return path


def write(path, lines, gz=False):
    text = "".join(line + "\n" for line in lines)
    if gz:
        with gzip.open(path, "wt") as handle:
            handle.write(text)
    else:
        path.write_text(text)
    return path


# ----------------------------------------------------------------------------- genome


def test_window_is_centered_by_the_documented_rule_and_refused_near_contig_ends(fasta):
    with Genome(fasta) as genome:
        assert genome.names == ["chr1", "chr2", "X"] and genome.lengths == {"chr1": 40, "chr2": 30, "X": 12}
        assert genome.window("chr1", 10, 5) == CHR1[8:13] == "ACGGC"  # odd: 2 bases each side
        assert genome.window("chr1", 10, 4) == CHR1[8:12] == "ACGG"   # even: 2 before, 1 after
        assert genome.window("chr1", 10, 4)[4 // 2] == CHR1[10]        # the center is index L // 2
        assert window_start(10, 5) == 8 and window_start(10, 4) == 8
        assert genome.window("chr1", 25, 6) == CHR1[22:28] == "ATCGCG"  # from the lower-case line
        assert genome.window("chr1", 2, 5) == CHR1[:5] and genome.window("chr1", 1, 5) is None
        assert genome.window("chr1", 37, 5) == CHR1[35:] and genome.window("chr1", 38, 5) is None
        assert genome.window("chr1", 20, 40) == CHR1 and genome.window("chr1", 20, 41) is None
        assert genome.window("chr2", 24, 3) == "TNA"
        assert genome.fetch("chr2", 0, 30) == CHR2
    assert (fasta.parent / "genome.fa.fai").exists()  # pyfaidx built the index


def test_contig_names_match_through_a_chr_prefix_and_the_renaming_is_recorded(fasta):
    with Genome(fasta) as genome:
        assert genome.resolve("chr1") == "chr1" and not genome.prefix_matched  # exact first
        assert genome.resolve("1") == "chr1" and genome.resolve("chrX") == "X"
        assert genome.resolve("3") is None and genome.resolve("chr") is None and genome.resolve("x") is None
        assert genome.prefix_matched and genome.renamed == {"1": "chr1", "chrX": "X"}
        assert genome.window("1", 10, 5) == "ACGGC"
        with pytest.raises(InputError, match="genome.fa: no sequence named 'chr9'"):
            genome.window("chr9", 10, 5)


def test_fasta_errors_are_one_line_naming_the_file(tmp_path):
    with pytest.raises(InputError, match=r"missing\.fa: no such file"):
        Genome(tmp_path / "missing.fa")
    plain_gzip = tmp_path / "genome.fa.gz"
    with gzip.open(plain_gzip, "wt") as handle:
        handle.write(FASTA)
    with pytest.raises(InputError, match=r"genome\.fa\.gz: .*bgzip") as err:
        Genome(plain_gzip)
    assert "\n" not in str(err.value)
    ragged = write(tmp_path / "ragged.fa", [">a", "ACGTACGT", "AC", "ACGTACGT"])
    with pytest.raises(InputError, match=r"ragged\.fa: cannot index"):
        Genome(ragged)


def test_bgzip_fasta_is_read_with_its_indexes(tmp_path):
    bgzf = pytest.importorskip("Bio.bgzf")
    path = tmp_path / "genome.fa.gz"
    with bgzf.BgzfWriter(str(path), "wb") as handle:
        handle.write(FASTA.encode())
    with Genome(path) as genome:
        assert genome.window("chr2", 15, 5) == CHR2[13:18] and genome.window("X", 6, 5) == CHRX[4:9]
    assert (tmp_path / "genome.fa.gz.fai").exists() and (tmp_path / "genome.fa.gz.gzi").exists()


# ----------------------------------------------------------------------------- reading variants


def test_vcf_gives_one_allele_per_alt_in_order_with_line_numbers(tmp_path):
    vcf = write(tmp_path / "v.vcf", [
        "##fileformat=VCFv4.2", "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO",
        "chr1\t11\trs1\tG\tA,T,C\t.\tPASS\t.", "", "chr2\t15\t.\tC\tG"])
    chunks = list(read_variants(vcf, chunk_size=2))
    assert [len(c) for c in chunks] == [2, 2]
    alleles = [v for c in chunks for v in c]
    assert [(v.chrom, v.pos, v.id, v.ref, v.alt, v.line) for v in alleles] == [
        ("chr1", 11, "rs1", "G", "A", 3), ("chr1", 11, "rs1", "G", "T", 3), ("chr1", 11, "rs1", "G", "C", 3),
        ("chr2", 15, "", "C", "G", 5)]


def test_a_tsv_with_a_header_is_read_by_column_name_and_id_is_optional(tmp_path):
    table = write(tmp_path / "v.tsv", ["#Chrom\tref\tPOS\talt\tnote", "1\tG\t11\tA,T\tx", "chr2\tC\t15\tG\ty"])
    alleles = [v for c in read_variants(table) for v in c]
    assert [(v.chrom, v.pos, v.id, v.ref, v.alt, v.line) for v in alleles] == [
        ("1", 11, "", "G", "A", 2), ("1", 11, "", "G", "T", 2), ("chr2", 15, "", "C", "G", 3)]
    with_id = write(tmp_path / "w.tsv", ["chrom\tpos\tid\tref\talt", "chr1\t11\tv1\tG\tA"])
    assert [v.id for c in read_variants(with_id) for v in c] == ["v1"]


@pytest.mark.parametrize("line, problem", [
    ("chr1\t11\trs1\tG", r"line 3: 4 column\(s\), a VCF record needs at least 5"),
    ("chr1 11 rs1 G A", r"line 3: 1 column\(s\).*separated by tabs"),
    ("chr1\t1x\trs1\tG\tA", r"line 3: POS '1x' is not an integer"),
    ("chr1\t0\trs1\tG\tA", r"line 3: POS 0 is not >= 1"),
    ("chr1\t11\trs1\t\tA", r"line 3: empty REF"),
    ("chr1\t11\trs1\tG\tA,", r"line 3: empty ALT allele in 'A,'"),
])
def test_a_malformed_vcf_line_names_the_file_and_its_line(tmp_path, line, problem):
    vcf = write(tmp_path / "bad.vcf", ["##fileformat=VCFv4.2", "chr1\t11\t.\tG\tA", line])
    with pytest.raises(InputError, match=r"bad\.vcf: " + problem):
        list(read_variants(vcf))


def test_tsv_errors_name_the_missing_columns_and_short_lines(tmp_path):
    missing = write(tmp_path / "m.tsv", ["chrom\tposition\tref\talt", "chr1\t11\tG\tA"])
    with pytest.raises(InputError, match=r"m\.tsv: line 1: no column 'pos' \(columns: chrom, position, ref, alt\)"):
        list(read_variants(missing))
    short = write(tmp_path / "s.tsv", ["chrom\tpos\tref\talt", "chr1\t11\tG\tA", "chr1\t12\tG"])
    with pytest.raises(InputError, match=r"s\.tsv: line 3: 3 column\(s\), the header has 4"):
        list(read_variants(short))
    with pytest.raises(InputError, match=r"nope\.vcf: no such file"):
        read_variants(tmp_path / "nope.vcf")


# ----------------------------------------------------------------------------- scoring variants

VCF_LINES = [
    "##fileformat=VCFv4.2",
    "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO",
    "1\t11\trs1\tG\tA,T\t.\t.\t.",      # chr1 by prefix; window CHR1[8:13] = ACGGC; two ok alleles
    "chr2\t15\t.\tC\tG,CA,<DEL>,*",     # ok, then three not_snv
    "1\t12\tmm\tA\tC",                  # genome has G: ref_mismatch
    "chr3\t5\tnowhere\tA\tC",           # unknown_contig
    "1\t2\tedge\tC\tG",                 # window would start at -1: near_contig_end
    "chr2\t30\tlast\tA\tT",             # the contig's last base: near_contig_end
    "chr2\t31\tpast\tA\tT",             # past the end: near_contig_end, no genome base
    "1\t21\tlower\tA\tt",               # soft-masked genome base, lower-case ALT: ok
    "1\t24\t.\tN\tA",                   # N is not a base: not_snv
]
EXPECTED = [  # chrom, pos, id, ref, alt, status, genome_ref, REF window
    ("1", "11", "rs1", "G", "A", "ok", "G", CHR1[8:13]),
    ("1", "11", "rs1", "G", "T", "ok", "G", CHR1[8:13]),
    ("chr2", "15", "", "C", "G", "ok", "C", CHR2[12:17]),
    ("chr2", "15", "", "C", "CA", "not_snv", "", None),
    ("chr2", "15", "", "C", "<DEL>", "not_snv", "", None),
    ("chr2", "15", "", "C", "*", "not_snv", "", None),
    ("1", "12", "mm", "A", "C", "ref_mismatch", "G", None),
    ("chr3", "5", "nowhere", "A", "C", "unknown_contig", "", None),
    ("1", "2", "edge", "C", "G", "near_contig_end", "C", None),
    ("chr2", "30", "last", "A", "T", "near_contig_end", "A", None),
    ("chr2", "31", "past", "A", "T", "near_contig_end", "", None),
    ("1", "21", "lower", "A", "t", "ok", "A", CHR1[18:23]),
    ("1", "24", "", "N", "A", "not_snv", "", None),
]


def alt_window(window: str, alt: str) -> str:
    return window[:LENGTH // 2] + alt.upper() + window[LENGTH // 2 + 1:]


@pytest.mark.parametrize("batch_size, chunk_size", [(256, 10_000), (1, 2)])
def test_every_status_one_row_per_allele_in_input_order_with_hand_computed_scores(fasta, tmp_path, batch_size, chunk_size):
    vcf = write(tmp_path / "v.vcf", VCF_LINES)
    calls = []

    def score(x):
        calls.append(x.shape)
        return linear(x)

    out = tmp_path / "out" / "scores.tsv"
    summary = score_variants(vcf, fasta, score, LENGTH, out, batch_size=batch_size, chunk_size=chunk_size)
    table = read_tsv(out)
    assert list(table.columns) == ["chrom", "pos", "id", "ref", "alt", "ref_score", "alt_score", "delta",
                                   "status", "genome_ref"]
    assert [tuple(r) for r in table[["chrom", "pos", "id", "ref", "alt", "status", "genome_ref"]].itertuples(index=False)] \
        == [e[:7] for e in EXPECTED]
    for row, (*_, alt, status, _, window) in zip(table.itertuples(), EXPECTED):
        if status == "ok":
            ref_value, alt_value = by_hand(window), by_hand(alt_window(window, alt))
            assert (float(row.ref_score), float(row.alt_score), float(row.delta)) == (ref_value, alt_value, alt_value - ref_value)
        else:
            assert row.ref_score == row.alt_score == row.delta == ""
    # e.g. rs1 G>A: window ACGGC, the center weight 3 times (A 1 - G 3)
    assert float(table.delta[0]) == -6 and float(table.delta[1]) == 3
    assert summary == {"rows": 13, "status": {"ok": 4, "not_snv": 4, "unknown_contig": 1, "ref_mismatch": 1,
                                              "near_contig_end": 3},
                       "score": "window", "chr_prefix_matched": True, "renamed": {"1": "chr1"}}
    assert all(b % 2 == 0 and b // 2 <= batch_size for b, _, _ in calls)  # REF and ALT windows together
    assert sum(b for b, _, _ in calls) == 2 * 4
    assert sorted(os.listdir(out.parent)) == ["scores.tsv"]


def test_ok_windows_are_the_genome_centered_on_pos_with_alt_at_the_center(fasta, tmp_path):
    seen = []
    vcf = write(tmp_path / "v.vcf", VCF_LINES[:4])

    def score(x):
        seen.extend(decode(x))
        return linear(x)

    score_variants(vcf, fasta, score, LENGTH, tmp_path / "o.tsv")
    assert seen == [CHR1[8:13], CHR1[8:13], CHR2[12:17], "ACAGC", "ACTGC", CHR2[12:14] + "G" + CHR2[15:17]]
    with Genome(fasta) as genome:
        variant = next(read_variants(vcf))[0]
        assert check_variant(variant, genome, 4).window == CHR1[8:12]  # even length: pos - 1 at index 2


def test_a_per_base_score_gives_window_sums_and_the_largest_change_at_any_base(fasta, tmp_path):
    vcf = write(tmp_path / "v.vcf", VCF_LINES)
    summary = score_variants(vcf, fasta, linear_track, LENGTH, tmp_path / "o.tsv")
    table = read_tsv(tmp_path / "o.tsv")
    assert list(table.columns) == ["chrom", "pos", "id", "ref", "alt", "ref_score", "alt_score", "delta",
                                   "max_abs_delta_per_base", "status", "genome_ref"]
    assert summary["score"] == "per_base"
    ok = table[table.status == "ok"]
    assert ok.ref_score.astype(float).tolist() == [by_hand(CHR1[8:13])] * 2 + [by_hand(CHR2[12:17]), by_hand(CHR1[18:23])]
    # only the center base changes: |3 * (value(alt) - value(ref))|
    assert ok.max_abs_delta_per_base.astype(float).tolist() == [6, 3, 3, 9]
    assert ok.delta.astype(float).tolist() == [-6, 3, 3, 9]
    assert (table[table.status != "ok"].max_abs_delta_per_base == "").all()


def test_gzip_vcf_and_tsv_give_the_same_rows_as_the_plain_vcf(fasta, tmp_path):
    plain = write(tmp_path / "v.vcf", VCF_LINES)
    packed = write(tmp_path / "v.vcf.gz", VCF_LINES, gz=True)
    rows = [line.split("\t") for line in VCF_LINES[2:]]
    table = write(tmp_path / "v.txt.gz", ["chrom\tpos\tid\tref\talt"] + ["\t".join(r[:5]) for r in rows], gz=True)
    for path in (plain, packed, table):
        score_variants(path, fasta, linear, LENGTH, tmp_path / f"{path.name}.tsv")
    expected = read_tsv(tmp_path / "v.vcf.tsv")
    pd.testing.assert_frame_equal(read_tsv(tmp_path / "v.vcf.gz.tsv"), expected)
    pd.testing.assert_frame_equal(read_tsv(tmp_path / "v.txt.gz.tsv"), expected)


def test_a_genome_that_matches_no_variant_contig_is_an_error_naming_both_sides(fasta, tmp_path):
    vcf = write(tmp_path / "v.vcf", ["#CHROM\tPOS\tID\tREF\tALT", "NC_000001.11\t5\t.\tA\tC", "NC_000002.12\t5\t.\tA\tAT"])
    with pytest.raises(InputError, match=r"genome\.fa: no sequence name matches a contig of .*v\.vcf.*"
                                         r"FASTA: 'chr1', 'chr2', 'X'; variants: 'NC_000001.11', 'NC_000002.12'"):
        score_variants(vcf, fasta, linear, LENGTH, tmp_path / "o.tsv")
    assert sorted(os.listdir(tmp_path)) == ["genome.fa", "genome.fa.fai", "v.vcf"]
    empty = write(tmp_path / "e.vcf", VCF_LINES[:2])  # no variants: not an error, a header
    assert score_variants(empty, fasta, linear, LENGTH, tmp_path / "e.tsv")["rows"] == 0
    assert read_tsv(tmp_path / "e.tsv").columns[0] == "chrom"


def test_nothing_is_written_when_a_late_line_or_the_fasta_is_bad(fasta, tmp_path):
    vcf = write(tmp_path / "v.vcf", VCF_LINES + ["chr1\t5\t.\tA"])
    out = tmp_path / "out"
    with pytest.raises(InputError, match=r"v\.vcf: line 12: 4 column"):
        score_variants(vcf, fasta, linear, LENGTH, out / "o.tsv", chunk_size=2, batch_size=1)
    assert os.listdir(out) == []
    with pytest.raises(InputError, match=r"absent\.fa: no such file"):
        score_variants(tmp_path / "v.vcf", tmp_path / "absent.fa", linear, LENGTH, out / "o.tsv")
    assert os.listdir(out) == []
    with pytest.raises(ValueError, match=r"score returned shape \(6, 2\)"):
        score_variants(write(tmp_path / "w.vcf", VCF_LINES[:4]), fasta, lambda x: np.zeros((len(x), 2)),
                       LENGTH, out / "o.tsv")
    assert os.listdir(out) == []


# ----------------------------------------------------------------------------- intervals

BED_LINES = [
    "track name=peaks", "browser position chr1:1-40", "# a comment",
    "chr1\t8\t13\tp1\t0\t+",    # middle base 10: CHR1[8:13]
    "chr1\t10\t14\tp2\t5\t-",   # even width 4: middle base 12, CHR1[10:15]
    "chr9\t0\t5\tp3\t0\t+",     # unknown_contig
    "chr2\t27\t30\tp4\t0\t+",   # middle 28: window 26-31 past the end
    "X\t0\t12\tp5\t0\t.",       # middle 6: CHRX[4:9]
]


def test_bed_windows_are_centered_on_the_middle_base_and_keep_input_order(fasta, tmp_path):
    bed = write(tmp_path / "p.bed", BED_LINES)
    intervals = list(read_intervals(bed))
    assert [(i.chrom, i.start, i.end, i.summit, i.line) for i in intervals][:2] == [("chr1", 8, 13, None, 4), ("chr1", 10, 14, None, 5)]
    with Genome(fasta) as genome:
        windows = interval_windows(intervals, genome, LENGTH)
    assert windows.status == ["ok", "ok", "unknown_contig", "near_contig_end", "ok"]
    assert decode(windows.x) == [CHR1[8:13], CHR1[10:15], CHRX[4:9]]
    assert windows.window_start.tolist() == [8, 10, 0, 26, 4]

    summary = score_intervals(bed, fasta, linear, LENGTH, tmp_path / "o.tsv")
    table = read_tsv(tmp_path / "o.tsv")
    assert list(table.columns) == ["chrom", "start", "end", "name", "score", "strand", "window_start", "window_end",
                                   "status", "prediction"]
    assert table.name.tolist() == ["p1", "p2", "p3", "p4", "p5"] and table.strand.tolist() == ["+", "-", "+", "+", "."]
    assert table.prediction.tolist() == [str(by_hand(CHR1[8:13])), str(by_hand(CHR1[10:15])), "", "", str(by_hand(CHRX[4:9]))]
    assert table.window_end.tolist() == ["13", "15", "5", "31", "9"]
    assert summary["status"] == {"ok": 3, "unknown_contig": 1, "near_contig_end": 1} and not summary["chr_prefix_matched"]


def test_narrowpeak_windows_are_centered_on_the_summit(fasta, tmp_path):
    peaks = write(tmp_path / "p.narrowPeak.gz", [
        "1\t0\t30\tpk1\t100\t.\t5.5\t3.1\t2.2\t20",    # summit 20 (prefix-matched chr1): CHR1[18:23]
        "1\t0\t30\tpk2\t100\t.\t5.5\t3.1\t2.2\t-1",    # no summit: middle base 15, CHR1[13:18]
        "chr2\t10\t20\tpk3\t100\t.\t1\t1\t1\t0",       # summit at the start, base 10: CHR2[8:13]
    ], gz=True)
    assert [i.summit for i in read_intervals(peaks)] == [20, None, 0]
    summary = score_intervals(peaks, fasta, linear_track, LENGTH, tmp_path / "o.tsv", batch_size=2)
    table = read_tsv(tmp_path / "o.tsv")
    assert list(table.columns) == ["chrom", "start", "end", "name", "score", "strand", "signalValue", "pValue",
                                   "qValue", "peak", "window_start", "window_end", "status",
                                   "prediction_sum", "prediction_max"]
    assert table.window_start.tolist() == ["18", "13", "8"] and table.peak.tolist() == ["20", "-1", "0"]
    windows = [CHR1[18:23], CHR1[13:18], CHR2[8:13]]
    assert table.prediction_sum.astype(float).tolist() == [by_hand(w) for w in windows]
    assert table.prediction_max.astype(float).tolist() == [max((i + 1) * VALUE[b] for i, b in enumerate(w)) for w in windows]
    assert summary["renamed"] == {"1": "chr1"}
    # ENCODE-style .bed.gz with 10 columns is narrowPeak too
    assert next(read_intervals(write(tmp_path / "enc.bed", ["chr1\t0\t30\tpk\t0\t.\t1\t1\t1\t7"]))).summit == 7


@pytest.mark.parametrize("line, problem", [
    ("chr1\t5", r"line 2: 2 column\(s\), BED needs at least 3"),
    ("chr1\tfive\t9", r"line 2: start 'five' is not an integer"),
    ("chr1\t9\t5", r"line 2: start 9, end 5: need 0 <= start <= end"),
    ("chr1\t1\t5\tname", r"line 2: 4 column\(s\), the first interval has 3"),
])
def test_a_malformed_bed_line_names_its_line(tmp_path, line, problem):
    bed = write(tmp_path / "bad.bed", ["chr1\t1\t5", line])
    with pytest.raises(InputError, match=r"bad\.bed: " + problem):
        list(read_intervals(bed))


def test_a_narrowpeak_summit_outside_its_peak_is_an_error_and_nothing_is_written(fasta, tmp_path):
    peaks = write(tmp_path / "p.narrowPeak", ["chr1\t0\t30\tpk\t0\t.\t1\t1\t1\t15", "chr1\t0\t30\tpk\t0\t.\t1\t1\t1\t30"])
    with pytest.raises(InputError, match=r"p\.narrowPeak: line 2: summit offset 30 outside the peak \(0 to 29"):
        score_intervals(peaks, fasta, linear, LENGTH, tmp_path / "out" / "o.tsv", batch_size=1)
    assert os.listdir(tmp_path / "out") == []
    nowhere = write(tmp_path / "n.bed", ["chrZ\t0\t5"])
    with pytest.raises(InputError, match=r"no sequence name matches a contig .*intervals: 'chrZ'"):
        score_intervals(nowhere, fasta, linear, LENGTH, tmp_path / "out" / "o.tsv")


def test_an_index_that_cannot_be_written_is_one_clear_error(fasta, monkeypatch):
    import pyfaidx

    def read_only(self):  # what pyfaidx raises when the FASTA's folder is read-only
        raise IOError(f"{self.indexname} may not be writable. Please use Fasta(rebuild=False)")

    monkeypatch.setattr(pyfaidx.Faidx, "build_index", read_only)
    with pytest.raises(InputError, match=r"genome\.fa: cannot write its index .*genome\.fa\.fai \(read-only folder\?\)"):
        Genome(fasta)


def test_the_benchmark_writes_scorable_snvs_with_the_planned_ref_mismatches(tmp_path):
    from benchmarks.variants import write_genome, write_snvs

    sequences = write_genome(tmp_path / "g.fa", 2, 1_000)
    mismatches = write_snvs(tmp_path / "v.vcf", sequences, 3_000, seed=1)
    with Genome(tmp_path / "g.fa") as genome:
        assert genome.fetch("chr2", 0, 1_000).encode() == sequences[1].tobytes()
    summary = score_variants(tmp_path / "v.vcf", tmp_path / "g.fa", linear, 101, tmp_path / "o.tsv")
    status = summary["status"]
    assert status["ref_mismatch"] == mismatches > 0 and status["not_snv"] == status["unknown_contig"] == 0
    assert status["ok"] + status["near_contig_end"] == 3_000 - mismatches and summary["renamed"] == {"1": "chr1", "2": "chr2"}
