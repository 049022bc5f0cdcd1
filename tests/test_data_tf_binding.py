import gzip
import hashlib
import json

import numpy as np
import pandas as pd
import pytest

from molml_jax.data import (
    Motif,
    iter_simulated_tf_binding,
    load_motifs,
    read_tf_binding,
    scan_motifs,
    simulate_tf_binding,
    write_tf_binding,
    write_tf_binding_chunks,
)
from molml_jax.data import tf_binding as tfb
from molml_jax.data.tf_binding import HUMAN_BACKGROUND, _motifs_path, log_odds, score_threshold
from molml_jax.errors import InputError

EXPECTED_IDS = ["MA0139.1", "MA0079.5", "MA0466.4", "MA0035.5", "MA0148.5", "MA0138.3", "MA0095.4", "MA0506.3"]
COMPLEMENT = str.maketrans("ACGT", "TGCA")


@pytest.fixture(scope="module")
def sim():
    return simulate_tf_binding(300, seed=3)


def revcomp(seq: str) -> str:
    return seq.translate(COMPLEMENT)[::-1]


# ----------------------------------------------------------------------------- motifs


def test_bundled_jaspar_matrices():
    doc = json.loads(_motifs_path().read_text())
    assert doc["source"] == "JASPAR2024 via pyjaspar" and doc["counts_columns"] == list("ACGT")
    assert [m["id"] for m in doc["motifs"]] == EXPECTED_IDS
    motifs = load_motifs()
    assert [m.name for m in motifs][:2] == ["CTCF", "SP1"]
    for m in motifs:
        assert m.counts.ndim == 2 and m.counts.shape[1] == 4 and m.width >= 7
        assert (m.counts >= 0).all()
        sums = m.counts.sum(axis=1)
        # JASPAR rows count the same sites, give or take a few partial ones
        assert sums.max() / sums.min() < 1.1, m.id
        np.testing.assert_allclose(m.frequencies.sum(axis=1), 1.0)
    ctcf = motifs[0]
    assert ctcf.counts[0].tolist() == [87, 291, 76, 459] and ctcf.width == 19
    # consensus of MA0139.1 (the CTCF core CCGCGNGGNGGCAG lies inside)
    consensus = "".join("ACGT"[i] for i in ctcf.counts.argmax(axis=1))
    assert "CCAGCAGGGGGCGC" in consensus or "CCACCAGGGGGCGC" in consensus


def test_load_motifs_by_id_base_id_or_name():
    assert [m.id for m in load_motifs(["MA0139.1", "MA0079", "gata1"])] == ["MA0139.1", "MA0079.5", "MA0035.5"]
    with pytest.raises(InputError, match=r"jaspar_motifs\.json: no bundled motif 'NOPE'") as info:
        load_motifs(["NOPE"])
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------- simulator


def test_simulator_shapes_names_and_determinism(sim):
    names, seqs, scores, planted = sim
    assert len(names) == len(seqs) == 300 and scores.shape == (300, 300) and scores.dtype == np.float32
    assert names[0] == "chr22sim:16000000-16000300" and names[1] == "chr22sim:16000300-16000600"
    assert all(len(s) == 300 and set(s) <= set("ACGT") for s in seqs)
    again = simulate_tf_binding(300, seed=3)
    assert again[1] == seqs and np.array_equal(again[2], scores) and again[3] == planted
    other = simulate_tf_binding(300, seed=4)
    assert other[1] != seqs
    per_window = np.bincount([p.window for p in planted], minlength=300)
    assert 1.2 < per_window.mean() < 1.8 and (per_window == 0).mean() > 0.1
    assert {p.strand for p in planted} == {"+", "-"}


def test_background_has_human_composition_and_cpg_depletion():
    names, seqs, scores, planted = simulate_tf_binding(300, seed=1, mean_instances=0.0)
    assert planted == []
    codes = np.frombuffer("".join(seqs).encode(), dtype=np.uint8).reshape(300, 300)
    freq = np.array([(codes == ord(b)).mean() for b in "ACGT"])
    np.testing.assert_allclose(freq, HUMAN_BACKGROUND, atol=0.01)
    cpg = ((codes[:, :-1] == ord("C")) & (codes[:, 1:] == ord("G"))).mean() / (freq[1] * freq[2])
    assert 0.15 < cpg < 0.4  # human genome: about 0.25 of the expected CpG count
    # no planted motifs: only rare chance matches score
    assert (scores > 0).mean() < 0.02


def test_chunking_keeps_the_historical_stream_up_to_a_chunk():
    # hashes of simulate_tf_binding(12, 40, seed=5, motifs=["CTCF", "SP1"]) before chunking
    names, seqs, scores, planted = simulate_tf_binding(12, 40, seed=5, motifs=["CTCF", "SP1"])
    assert hashlib.sha256("".join(seqs).encode()).hexdigest()[:16] == "65cd0d787eafafb6"
    assert hashlib.sha256(scores.tobytes()).hexdigest()[:16] == "683c72c1d484efaf"
    assert len(planted) == 18 and planted[0] == (0, "MA0079.5", 12, "+")
    for chunk in (12, 100):  # a set of at most `chunk` windows is one chunk, the same windows
        (only,) = list(iter_simulated_tf_binding(12, 40, seed=5, motifs=["CTCF", "SP1"], chunk=chunk))
        assert only[0] == names and only[1] == seqs and only[3] == planted
        np.testing.assert_array_equal(only[2], scores)
    # the first chunk of a larger set is that set's start too
    first = next(iter_simulated_tf_binding(30, 40, seed=5, motifs=["CTCF", "SP1"], chunk=12))
    assert first[1] == seqs and np.array_equal(first[2], scores) and first[3] == planted


def test_chunks_continue_names_and_windows_with_fresh_streams():
    chunks = list(iter_simulated_tf_binding(20, 40, seed=2, motifs=["CTCF"], chunk=7))
    assert [len(c[0]) for c in chunks] == [7, 7, 6]
    names = [n for c in chunks for n in c[0]]
    assert names == [f"chr22sim:{16_000_000 + 40 * i}-{16_000_000 + 40 * (i + 1)}" for i in range(20)]
    assert len(set(names)) == 20
    for c, (chunk_names, seqs, scores, planted) in enumerate(chunks):
        assert scores.shape == (len(chunk_names), 40) and scores.dtype == np.float32
        assert all(7 * c <= p.window < 7 * c + len(chunk_names) for p in planted)  # global indices
        np.testing.assert_array_equal(scan_motifs(seqs, ["CTCF"]), scores)
    # later chunks are new draws, not the first chunk again
    assert chunks[1][1][0] != chunks[0][1][0] and chunks[2][1][0] != chunks[0][1][0]
    joined = simulate_tf_binding(20, 40, seed=2, motifs=["CTCF"], chunk=7)
    assert joined[0] == names and joined[1] == [s for c in chunks for s in c[1]]
    np.testing.assert_array_equal(joined[2], np.concatenate([c[2] for c in chunks]))
    assert joined[3] == [p for c in chunks for p in c[3]]
    with pytest.raises(InputError, match="chunk must be at least 1"):
        iter_simulated_tf_binding(5, 40, chunk=0)  # checked before the first chunk is asked for


def reference_scan(seq: str, motifs: list[Motif]) -> np.ndarray:
    """Straightforward per-window loop: the scores the simulator must produce."""
    out = np.zeros(len(seq))
    idx = ["ACGT".index(c) for c in seq]
    for m in motifs:
        lo = log_odds(m)
        t = score_threshold(lo)
        w = m.width
        for s in range(len(seq) - w + 1):
            plus = sum(lo[j, idx[s + j]] for j in range(w))
            minus = sum(lo[w - 1 - j, 3 - idx[s + j]] for j in range(w))
            best = max(plus, minus)
            if best >= t - 1e-9:
                out[s : s + w] = np.maximum(out[s : s + w], best)
    return out


def test_scores_are_a_motif_scan_of_the_sequence_alone(sim):
    names, seqs, scores, planted = sim
    motifs = load_motifs()
    for i in (0, 1, 2, 7):
        np.testing.assert_allclose(scores[i], reference_scan(seqs[i], motifs), rtol=1e-5, atol=1e-5)
    # recomputing from the sequences gives the same scores: nothing comes from `planted`
    np.testing.assert_array_equal(scan_motifs(seqs), scores)
    # zero away from matches, positive over them; the nonzero part is a small share
    assert (scores >= 0).all() and 0.01 < (scores > 0).mean() < 0.15
    assert scores[scores > 0].min() > 5.0  # every match passes a real threshold


def test_planted_ctcf_is_mostly_detected(sim):
    names, seqs, scores, planted = sim
    ctcf = [p for p in planted if p.motif_id == "MA0139.1"]
    assert len(ctcf) > 20
    hit = [(scores[p.window, p.start : p.start + 19] > 0).all() for p in ctcf]
    assert np.mean(hit) > 0.8
    for strand in "+-":
        assert np.mean([h for h, p in zip(hit, ctcf) if p.strand == strand]) > 0.7


def test_minus_strand_instance_is_scored():
    ctcf = load_motifs(["CTCF"])[0]
    consensus = "".join("ACGT"[i] for i in log_odds(ctcf).argmax(axis=1))  # best-scoring word
    background = "AT" * 150  # no CTCF-like word anywhere
    seq = background[:100] + revcomp(consensus) + background[119:]
    assert len(seq) == 300
    plus_only = log_odds(ctcf)[np.arange(19), ["ACGT".index(c) for c in revcomp(consensus)]].sum()
    assert plus_only < score_threshold(log_odds(ctcf))  # found only through the minus strand
    scores = scan_motifs([seq, background], [ctcf])
    maximum = log_odds(ctcf).max(axis=1).sum()
    np.testing.assert_allclose(scores[0, 100:119], maximum, rtol=1e-5)
    assert (scores[0, :100] == 0).all() and (scores[0, 119:] == 0).all()
    assert (scores[1] == 0).all()


# ----------------------------------------------------------------------------- files


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_round_trip_aligns_scores_by_name(tmp_path, sim, suffix):
    names, seqs, scores, _ = [v[:12] for v in sim[:3]] + [None]
    seq_path, score_path = tmp_path / f"seq.txt{suffix}", tmp_path / f"scores.txt{suffix}"
    write_tf_binding(seq_path, score_path, names, seqs, scores)
    if suffix:
        assert gzip.decompress(seq_path.read_bytes()).startswith(b"window_name\tsequence\n")
    data = read_tf_binding(seq_path, score_path)
    assert data.names == names and data.sequences == seqs and len(data) == 12
    assert data.x.shape == (12, 300, 4) and data.x.dtype == np.float32 and data.y.dtype == np.float32
    np.testing.assert_array_equal(data.x.argmax(-1)[0], ["ACGT".index(c) for c in seqs[0]])
    np.testing.assert_allclose(data.y, scores, rtol=1e-5)
    assert data.source == (str(seq_path), str(score_path))

    # columns shuffled, plus a leading index column as pandas writes with index=True
    order = np.random.default_rng(0).permutation(12)
    shuffled = pd.DataFrame(scores.T[:, order], columns=[names[i] for i in order])
    shuffled.to_csv(score_path, sep="\t", index=True, compression="gzip" if suffix else None)
    data = read_tf_binding(seq_path, score_path)
    np.testing.assert_allclose(data.y, scores, rtol=1e-5)


def test_gzip_output_is_reproducible(tmp_path, sim):
    names, seqs, scores = (v[:3] for v in sim[:3])
    write_tf_binding(tmp_path / "a.gz", tmp_path / "b.gz", names, seqs, scores)
    first = (tmp_path / "a.gz").read_bytes()
    write_tf_binding(tmp_path / "a.gz", tmp_path / "b.gz", names, seqs, scores)
    assert (tmp_path / "a.gz").read_bytes() == first


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_chunk_writer_gives_write_tf_binding_bytes(tmp_path, sim, suffix, monkeypatch):
    names, seqs, scores = (v[:20] for v in sim[:3])
    write_tf_binding(tmp_path / f"s{suffix}", tmp_path / f"c{suffix}", names, seqs, scores)
    one = write_tf_binding_chunks(tmp_path / f"s1{suffix}", tmp_path / f"c1{suffix}", [(names, seqs, scores)])
    assert one == 20
    chunks = [(names[i : i + 7], seqs[i : i + 7], scores[i : i + 7]) for i in range(0, 20, 7)]
    write_tf_binding_chunks(tmp_path / f"s3{suffix}", tmp_path / f"c3{suffix}", iter(chunks))
    monkeypatch.setattr(tfb, "_MERGE_FILES", 2)  # 7 parts: merged in rounds, same bytes
    chunks = [(names[i : i + 3], seqs[i : i + 3], scores[i : i + 3]) for i in range(0, 20, 3)]
    write_tf_binding_chunks(tmp_path / f"s7{suffix}", tmp_path / f"c7{suffix}", chunks)
    for kind in "sc":
        expected = (tmp_path / f"{kind}{suffix}").read_bytes()
        for tag in "137":
            assert (tmp_path / f"{kind}{tag}{suffix}").read_bytes() == expected, (kind, tag)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"{k}{t}{suffix}" for k in "sc" for t in ("", "1", "3", "7"))  # no temporary files left


def test_chunked_simulation_round_trips_through_read_tf_binding(tmp_path):
    chunks = list(iter_simulated_tf_binding(20, 40, seed=4, motifs=["CTCF", "SP1"], chunk=7))
    seq_path, score_path = tmp_path / "seq.tsv.gz", tmp_path / "scores.tsv.gz"
    assert write_tf_binding_chunks(seq_path, score_path, iter(chunks)) == 20  # planted sites ignored
    data = read_tf_binding(seq_path, score_path)
    assert data.names == [n for c in chunks for n in c[0]]
    assert data.sequences == [s for c in chunks for s in c[1]]
    truth = np.concatenate([c[2] for c in chunks])
    assert (truth > 0).any()
    np.testing.assert_allclose(data.y, truth, rtol=6e-6)  # %.6g in the file: 6 significant digits


def test_chunk_writer_leaves_no_files_after_an_error(tmp_path, sim):
    names, seqs, scores = (v[:10] for v in sim[:3])
    seq_path, score_path = tmp_path / "seq.tsv.gz", tmp_path / "scores.tsv.gz"
    seq_path.write_bytes(b"old sequences")  # files from before stay as they were

    def failing():
        yield names[:5], seqs[:5], scores[:5]
        raise RuntimeError("simulation failed")

    with pytest.raises(RuntimeError, match="simulation failed"):
        write_tf_binding_chunks(seq_path, score_path, failing())
    assert [p.name for p in tmp_path.iterdir()] == ["seq.tsv.gz"] and seq_path.read_bytes() == b"old sequences"
    repeated = [(names[:5], seqs[:5], scores[:5]), (names[4:], seqs[4:], scores[4:])]
    with pytest.raises(InputError, match="window names must be unique; repeated: 'chr22sim:16001200-16001500'"):
        write_tf_binding_chunks(seq_path, score_path, repeated)
    with pytest.raises(InputError, match="chunk 1 has 299 bp windows, earlier chunks 300 bp"):
        write_tf_binding_chunks(seq_path, score_path, [(names[:5], seqs[:5], scores[:5]),
                                                      (names[5:], [s[:299] for s in seqs[5:]], scores[5:, :299])])
    with pytest.raises(InputError, match="no windows to write"):
        write_tf_binding_chunks(seq_path, score_path, [])
    assert [p.name for p in tmp_path.iterdir()] == ["seq.tsv.gz"]


def _files(tmp_path, seq_table, score_table, *, seq_name="seq.txt", score_name="scores.txt"):
    seq_path, score_path = tmp_path / seq_name, tmp_path / score_name
    if seq_table is not None:
        seq_path.write_text(seq_table)
    if score_table is not None:
        score_path.write_text(score_table)
    return seq_path, score_path


SEQS = "window_name\tsequence\nw1\tACGT\nw2\tGGCC\n"
SCORES = "w1\tw2\n0\t1\n0.5\t1\n0\t2\n0\t0\n"


@pytest.mark.parametrize(
    "seqs, scores, which, message",
    [
        # (sequences file, scores file, the file the message names, what it says)
        (None, SCORES, "seq", "no such file"),
        (SEQS, None, "score", "no such file"),
        ("", SCORES, "seq", "file is empty"),
        (SEQS, "", "score", "file is empty"),
        ("window_name\tdna\nw1\tACGT\n", SCORES, "seq", "no column 'sequence'"),
        ("window_name\tsequence\n", SCORES, "seq", "no rows after the header"),
        ("window_name\tsequence\nw1\tACGT\nw1\tGGCC\n", SCORES, "seq", "duplicate window names 'w1'"),
        (SEQS, "w1\tw1\n0\t1\n0\t1\n0\t1\n0\t1\n", "score", "duplicate window columns 'w1'"),
        (SEQS + "w3\tAAAA\n", SCORES, "score", "no score column for 1 window(s) of seq.txt: 'w3'"),
        (SEQS, "w1\tw2\tw9\n0\t1\t0\n0\t1\t0\n0\t1\t0\n0\t1\t0\n", "score",
         "score column(s) 'w9' have no sequence"),
        ("window_name\tsequence\nw1\tACGT\nw2\tGGC\n", SCORES, "seq", "w2 has 3"),
        (SEQS, "w1\tw2\n0\t1\n0\t1\n0\t1\n", "score", "3 rows (bases) but the sequences in seq.txt are 4 bp"),
        (SEQS, "w1\tw2\n0\t1\n0\tnan\n0\t1\n0\t1\n", "score",
         "window 'w2', position 2: score is missing or NaN"),
        (SEQS, "w1\tw2\n0\t1\n0\t1\n0\t1\n-inf\t1\n", "score", "window 'w1', position 4: score is infinite"),
        (SEQS, "w1\tw2\n0\t1\n0\t1\n0\thigh\n0\t1\n", "score",
         "window 'w2', position 3: score 'high' is not a number"),
        # Python's float() takes '1_000'; the file format does not
        (SEQS, "w1\tw2\n0\t1\n0\t1_000\n0\t1\n0\t1\n", "score",
         "window 'w2', position 2: score '1_000' is not a number"),
        ("window_name\tsequence\nw1\tACGT\nw2\tGXCC\n", SCORES, "seq",
         "w2: unknown character 'X' at position 2"),
    ],
)
def test_bad_inputs_give_one_line_errors_naming_file_and_problem(tmp_path, seqs, scores, which, message):
    seq_path, score_path = _files(tmp_path, seqs, scores)
    with pytest.raises(InputError) as info:
        read_tf_binding(seq_path, score_path)
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith(str(seq_path if which == "seq" else score_path)), text
    assert message in text, text


def test_bad_gzip_and_folder(tmp_path):
    seq_path, score_path = _files(tmp_path, SEQS, SCORES)
    bad = tmp_path / "scores.txt.gz"
    bad.write_bytes(b"not gzip at all")
    with pytest.raises(InputError, match=r"scores\.txt\.gz: not a readable tab-separated file"):
        read_tf_binding(seq_path, bad)
    with pytest.raises(InputError, match="is a folder"):
        read_tf_binding(tmp_path, score_path)


def test_numpy_scores_reader_matches_pandas(tmp_path, sim):
    names, seqs, scores = (v[:12] for v in sim[:3])
    seq_path, score_path = tmp_path / "seq.tsv", tmp_path / "scores.tsv.gz"
    write_tf_binding(seq_path, score_path, names, seqs, scores)
    header = tfb._header(score_path)
    fast = tfb._read_scores_fast(score_path, header, names, 300)
    assert fast is not None and fast.shape == (12, 300) and fast.dtype == np.float32
    np.testing.assert_array_equal(fast, tfb._read_scores_table(score_path, seq_path, header, names, 300))
    # unusual files are left to pandas, which names the problem
    assert tfb._read_scores_fast(score_path, header, names, 299) is None
    assert tfb._read_scores_fast(score_path, header, names[::-1][1:], 300) is None


def test_small_plain_files_read(tmp_path):
    seq_path, score_path = _files(tmp_path, SEQS, "w2\tw1\n1\t0\n1\t0.5\n2\t0\n0\t0\n")
    data = read_tf_binding(seq_path, score_path)
    np.testing.assert_array_equal(data.y, [[0, 0.5, 0, 0], [1, 1, 2, 0]])
    # a first column that is neither a window nor a row index is reported, not dropped
    seq_path, score_path = _files(tmp_path, SEQS, "x\tw1\tw2\n7\t0\t1\n7\t0\t1\n7\t0\t1\n7\t0\t1\n")
    with pytest.raises(InputError, match=r"score column\(s\) 'x' have no sequence"):
        read_tf_binding(seq_path, score_path)
