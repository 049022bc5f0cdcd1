"""The other strand, ensembles, and the interpretation verbs of the sequence pipelines
(attribute, variants, predict --bed) end to end on tiny trained runs."""

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from molml_jax.data import one_hot
from molml_jax.errors import InputError
from molml_jax.data.strands import random_reverse_complement, reverse_complement, reverse_profile
from molml_jax.metrics.classification import sigmoid
from molml_jax.pipelines import dna, tf_binding
from molml_jax.pipelines.ensemble import load_ensemble

from conftest import motif_sequences, run_launcher

BASES = "ACGT"


def decode(x: np.ndarray) -> str:
    return "".join(BASES[row.argmax()] if row.any() else "N" for row in np.asarray(x))


def rc_text(sequence: str) -> str:
    return sequence[::-1].translate(str.maketrans("ACGTN", "TGCAN"))


def test_reverse_complement_of_padded_sequences_keeps_the_padding_at_the_end():
    x, lengths = one_hot(["ACGTTG", "AAC", "GNT"], allow_ragged=True)
    for array in (x, jnp.asarray(x)):
        turned = reverse_complement(array, lengths if isinstance(array, np.ndarray) else jnp.asarray(lengths))
        assert [decode(r) for r in np.asarray(turned)] == ["CAACGT", "GTTNNN", "ANCNNN"]
    assert decode(reverse_complement(x[0])) == rc_text("ACGTTG")
    np.testing.assert_array_equal(reverse_complement(reverse_complement(x, lengths), lengths), x)
    profile = np.arange(12.0).reshape(2, 6)
    np.testing.assert_array_equal(reverse_profile(profile, np.array([6, 3])),
                                  [[5, 4, 3, 2, 1, 0], [8, 7, 6, 0, 0, 0]])


def test_random_reverse_complement_turns_the_profile_with_its_sequence_and_depends_on_position_only():
    x, _ = one_hot(["ACGTTGCA", "AACCGGTA", "GATTACAG", "TTTTACGT"])
    y = np.arange(32.0).reshape(4, 8)
    batch = {"x": jnp.asarray(x), "y": jnp.asarray(y), "_position": jnp.arange(4)}
    out = random_reverse_complement(jax.random.key(0), batch, profile_keys=("y",))
    flipped = [not np.array_equal(np.asarray(out["x"][i]), x[i]) for i in range(4)]
    assert 0 < sum(flipped) < 4  # some examples turned, some not (seed 0)
    for i in range(4):
        want_x, want_y = (reverse_complement(x[i]), y[i, ::-1]) if flipped[i] else (x[i], y[i])
        np.testing.assert_array_equal(out["x"][i], want_x)
        np.testing.assert_array_equal(out["y"][i], want_y)
    # an example's coin is drawn from its place in the global batch: the second half of the
    # batch on its own (as a second device sees it) turns the same examples
    half = {k: v[2:] for k, v in batch.items()}
    np.testing.assert_array_equal(random_reverse_complement(jax.random.key(0), half, profile_keys=("y",))["x"],
                                  out["x"][2:])
    assert random_reverse_complement(jax.random.key(0), batch, probability=0.0) is batch


def _dna_config(csv, out, **kw):
    return dna.Config(**{**dict(data=str(csv), epochs=2, batch_size=32, hidden_dim=4, out=str(out)), **kw})


def _palindromes(n: int, half: int, seed: int) -> tuple[list[str], np.ndarray]:
    """Sequences equal to their own reverse complement (so --rc-augment cannot change them)."""
    rng = np.random.default_rng(seed)
    left = ["".join(rng.choice(list(BASES), size=half)) for _ in range(n)]
    return [s + rc_text(s) for s in left], np.arange(n) % 2


def test_rc_augment_changes_nothing_else(tmp_path):
    """On sequences that are their own reverse complement the augmentation is the identity:
    the history with --rc-augment is the history without it (same batches, same dropout and
    initial weights). On other sequences it changes training."""
    def histories(name, seqs, labels):
        """{rc_augment: history.csv} of the same run without and with the augmentation."""
        csv = tmp_path / f"{name}.csv"
        pd.DataFrame({"seq": seqs, "bind": labels}).to_csv(csv)
        out = {}
        for flag in (False, True):
            dna.train_and_evaluate(_dna_config(csv, tmp_path / f"{name}{flag}", rc_augment=flag), progress=False)
            out[flag] = pd.read_csv(tmp_path / f"{name}{flag}" / "history.csv")
        return out

    same = histories("palindromes", *_palindromes(96, 10, seed=0))
    pd.testing.assert_frame_equal(same[False].drop(columns="epoch_seconds"),
                                  same[True].drop(columns="epoch_seconds"), atol=1e-6, rtol=0)
    other = histories("motifs", *motif_sequences(96, 20, seed=1))
    assert not np.allclose(other[False]["train_loss"].to_numpy(), other[True]["train_loss"].to_numpy())


@pytest.fixture(scope="module")
def dna_runs(tmp_path_factory):
    """Two tiny DNA runs (seeds 0 and 1) in one folder, and their data file."""
    root = tmp_path_factory.mktemp("dna_runs")
    seqs, labels = motif_sequences(160, 24, seed=0)
    csv = root / "tiny.csv"
    pd.DataFrame({"seq": seqs, "bind": labels}).to_csv(csv)
    for seed in (0, 1):
        dna.train_and_evaluate(_dna_config(csv, root / "seeds" / f"s{seed}", seed=seed), progress=False)
    return root, csv


def test_ensembles_average_logits_and_rc_average_averages_the_strands(dna_runs):
    root, _ = dna_runs
    seqs, _ = motif_sequences(6, 24, seed=5)
    x, _ = one_hot(seqs)
    logits = []
    for seed in (0, 1):
        config, model, variables = dna.load_run(root / "seeds" / f"s{seed}")
        forward = np.asarray(model.apply(variables, x, train=False))
        other = np.asarray(model.apply(variables, reverse_complement(x), train=False))
        logits.append((forward, other))
    mean = (logits[0][0] + logits[1][0]) / 2
    runs = f"{root / 'seeds' / 's0'},{root / 'seeds' / 's1'}"
    np.testing.assert_allclose(dna.predict_arrays(runs, x), sigmoid(mean), atol=1e-6)
    np.testing.assert_allclose(dna.predict_arrays([root / "seeds" / "s0", root / "seeds" / "s1"], x), sigmoid(mean),
                               atol=1e-6)
    with pytest.raises(InputError, match=r"not a run folder .*give them with commas: .*s0,.*s1"):
        dna.predict_arrays(root / "seeds", x)  # a folder of runs is not silently averaged
    both = (logits[0][0] + logits[0][1]) / 2
    np.testing.assert_allclose(dna.predict_arrays(root / "seeds" / "s0", x, rc_average=True), sigmoid(both), atol=1e-6)
    # a reverse-complemented input gives the same rc-averaged prediction
    np.testing.assert_allclose(dna.predict_arrays(runs, reverse_complement(x), rc_average=True),
                               dna.predict_arrays(runs, x, rc_average=True), atol=1e-6)
    assert len(load_ensemble(dna, runs)) == 2


def test_tf_rc_average_turns_the_other_strands_track_back_and_attributions_add_up(tmp_path):
    config = tf_binding.Config(simulate_windows=200, simulate_length=40, batch_size=16, num_channels=8,
                               num_blocks=1, epochs=3, out=str(tmp_path / "tf"))
    tf_binding.train_and_evaluate(config, progress=False)
    x = np.eye(4, dtype=np.float32)[np.random.default_rng(0).integers(0, 4, (3, 40))]
    forward = tf_binding.predict_arrays(tmp_path / "tf", x)
    other = tf_binding.predict_arrays(tmp_path / "tf", reverse_complement(x))
    np.testing.assert_allclose(tf_binding.predict_arrays(tmp_path / "tf", x, rc_average=True),
                               (forward + other[:, ::-1]) / 2, atol=1e-6)
    # attributions of a window's summed scores over positions 4:10, one call per method
    from molml_jax.pipelines.interpretation import attribute_arrays

    ism = attribute_arrays(tf_binding, tmp_path / "tf", x[:1], method="ism", positions="4:10")["attributions"][0]
    mutant = x[:1].copy()
    mutant[0, 7] = np.eye(4, dtype=np.float32)[(x[0, 7].argmax() + 1) % 4]
    change = (tf_binding.predict_arrays(tmp_path / "tf", mutant)[:, 4:10].sum()
              - tf_binding.predict_arrays(tmp_path / "tf", x[:1])[:, 4:10].sum())
    assert ism[7, (x[0, 7].argmax() + 1) % 4] == pytest.approx(change, abs=1e-4)
    # integrated gradients of the trained CNN with 50 steps and the default (uniform) baseline
    # add up to f(x) - f(baseline) within 1% on every validation window (measured: <= 0.2%)
    data = tf_binding.load_data(config)
    windows = np.asarray(data.x[data.split["val"][:16]])
    completeness = attribute_arrays(tf_binding, tmp_path / "tf", windows, method="integrated-gradients")["completeness"]
    assert completeness.max() < 1e-2


def _write_genome(folder):
    rng = np.random.default_rng(0)
    contigs = {"chr1": "".join(rng.choice(list(BASES), size=200)), "chr2": "".join(rng.choice(list(BASES), size=80))}
    path = folder / "genome.fa"
    path.write_text("".join(f">{name}\n{seq}\n" for name, seq in contigs.items()))
    return path, contigs


def test_cli_attribute_variants_and_bed_on_a_dna_run(dna_runs, tmp_path, capsys):
    root, csv = dna_runs
    run = root / "seeds" / "s0"
    fasta = tmp_path / "seqs.fa"
    seqs, _ = motif_sequences(3, 24, seed=9)
    fasta.write_text("".join(f">q{i}\n{s}\n" for i, s in enumerate(seqs)))
    out = tmp_path / "attr" / "ism.npz"
    proc = run_launcher("dna", "attribute", "--checkpoint", run, "--input", fasta, "--method", "ism",
                        "--output", out, "--plot", "1", capsys=capsys)
    assert proc.returncode == 0, proc.stderr
    with np.load(out, allow_pickle=False) as saved:
        assert saved["attributions"].shape == (3, 24, 4) and list(saved["names"]) == ["q0", "q1", "q2"]
        assert list(saved["sequences"]) == seqs
        ism = saved["attributions"]
    config, model, variables = dna.load_run(run)
    x, _ = one_hot(seqs)
    mutant = x[1:2].copy()
    mutant[0, 5] = np.eye(4, dtype=np.float32)[(x[1, 5].argmax() + 2) % 4]
    change = float(model.apply(variables, mutant, train=False)[0] - model.apply(variables, x[1:2], train=False)[0])
    assert ism[1, 5, (x[1, 5].argmax() + 2) % 4] == pytest.approx(change, abs=1e-5)
    assert (tmp_path / "attr" / "ism_logo_0.png").stat().st_size > 5_000
    assert (tmp_path / "attr" / "ism_ism_0.png").is_file() and not (tmp_path / "attr" / "ism_logo_1.png").exists()

    genome, contigs = _write_genome(tmp_path)
    vcf = tmp_path / "snvs.vcf"
    ref50 = contigs["chr1"][49]
    other, third = [b for b in BASES if b != ref50][:2]
    wrong = next(b for b in BASES if b != contigs["chr1"][99])
    vcf.write_text("##fileformat=VCFv4.2\n#CHROM\tPOS\tID\tREF\tALT\n"
                   f"1\t50\tv1\t{ref50}\t{other},{third}\n1\t100\tv2\t{wrong}\tA\nchr9\t5\tv3\tA\tC\n"
                   f"2\t40\tv4\tAC\tA\n1\t3\tv5\t{contigs['chr1'][2]}\tG\n")
    effects = tmp_path / "effects.tsv"
    proc = run_launcher("dna", "variants", "--checkpoint", run, "--variants", vcf, "--reference", genome,
                        "--output", effects, "--length", "24", capsys=capsys)
    assert proc.returncode == 0, proc.stderr
    assert "chr" in proc.stdout and "6 alleles" in proc.stdout
    table = pd.read_csv(effects, sep="\t", keep_default_na=False)
    assert list(table["id"]) == ["v1", "v1", "v2", "v3", "v4", "v5"]
    assert list(table["status"]) == ["ok", "ok", "ref_mismatch", "unknown_contig", "not_snv", "near_contig_end"]
    assert list(table["alt"][:2]) == [other, third]
    window = contigs["chr1"][49 - 12:49 + 12]
    alt_window = window[:12] + other + window[13:]
    want = (model.apply(variables, one_hot([alt_window])[0], train=False)[0]
            - model.apply(variables, one_hot([window])[0], train=False)[0])
    assert float(table["delta"][0]) == pytest.approx(float(want), abs=1e-4)

    bed = tmp_path / "peaks.bed"
    bed.write_text("chr1\t10\t70\tpeakA\nchr1\t180\t200\tpeakB\nchr2\t20\t60\tpeakC\n")
    peaks = tmp_path / "peaks.tsv"
    proc = run_launcher("dna", "predict", "--checkpoint", run, "--bed", bed, "--reference", genome,
                        "--output", peaks, "--length", "24", "--rc-average", capsys=capsys)
    assert proc.returncode == 0, proc.stderr
    table = pd.read_csv(peaks, sep="\t", keep_default_na=False)
    assert list(table["name"]) == ["peakA", "peakB", "peakC"]
    assert list(table["status"]) == ["ok", "near_contig_end", "ok"]
    centre = contigs["chr1"][40 - 12:40 + 12]
    want = dna.predict_arrays(run, one_hot([centre])[0], rc_average=True)[0]
    assert float(table["prediction"][0]) == pytest.approx(float(want), abs=1e-5)


@pytest.mark.parametrize("args, fragment", [
    (["attribute", "--method", "deeplift"], "invalid choice"),
    (["attribute", "--steps", "0"], "at least 1"),
    (["attribute", "--output", "x.txt"], ".npz"),
    (["variants", "--variants", "VCF", "--reference", "missing.fa"], "missing.fa"),
    (["predict", "--bed", "peaks.bed"], "--reference"),
])
def test_cli_interpretation_bad_input_is_one_line_and_writes_nothing(dna_runs, tmp_path, capsys, args, fragment):
    root, _ = dna_runs
    fasta = tmp_path / "seqs.fa"
    fasta.write_text(">a\nACGTACGTACGT\n")
    vcf = tmp_path / "v.vcf"
    vcf.write_text("#CHROM\tPOS\tID\tREF\tALT\nchr1\t5\t.\tA\tC\n")
    args = [str(vcf) if a == "VCF" else str(tmp_path / a) if a.endswith((".fa", ".bed", ".txt")) else a for a in args]
    command, rest = args[0], args[1:]
    base = ["--checkpoint", root / "seeds" / "s0"]
    if command == "attribute":
        base += ["--input", fasta] + ([] if "--output" in rest else ["--output", tmp_path / "out.npz"])
    else:
        base += ["--output", tmp_path / "out.tsv"]
    proc = run_launcher("dna", command, *base, *rest, capsys=capsys)
    assert proc.returncode == 2, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ") and fragment in line and "Traceback" not in proc.stderr
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith("out")]


@pytest.mark.parametrize("parallel", ["vmap", "sequential"])
def test_a_sweep_folder_is_the_ensemble_of_its_configurations_final_weights(dna_runs, tmp_path, parallel):
    _, csv = dna_runs
    out = tmp_path / "sweep"
    result = dna.sweep(_dna_config(csv, out, epochs=2), [1e-2, 1e-3], parallel=parallel, progress=False)
    members = sorted(p.name for p in (out / "members").iterdir())
    assert members == ["lr0.001_seed0", "lr0.01_seed0"]
    seqs, _ = motif_sequences(5, 24, seed=3)
    x, _ = one_hot(seqs)
    logits = []
    for name in members:
        config, model, variables = dna.load_run(out / "members" / name)  # its final state
        assert config.lr == float(name[2:].split("_")[0]) and config.epochs == 2
        logits.append(np.asarray(model.apply(variables, x, train=False)))
    np.testing.assert_allclose(dna.predict_arrays(out, x), sigmoid((logits[0] + logits[1]) / 2), atol=1e-6)
    # the members' final weights are those the sweep evaluated last: same validation loss
    data = dna.load_data(_dna_config(csv, out))
    val = data.arrays("val")
    from molml_jax.train import binary_cross_entropy_with_logits

    for name, row in zip(members, sorted(result["rows"], key=lambda r: member_name_of(r))):
        config, model, variables = dna.load_run(out / "members" / name)
        loss = float(np.mean(binary_cross_entropy_with_logits(model.apply(variables, val["x"], train=False), val["y"])))
        assert loss == pytest.approx(row["last_val_loss"], rel=1e-4)


def member_name_of(row: dict) -> str:
    return f"lr{row['lr']:g}_seed{row['seed']}"
