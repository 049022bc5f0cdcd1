"""Do a trained TF-binding model's attributions and variant effects point at the motifs?

    python -m benchmarks.tf_motifs                      # 5,000 simulated CTCF windows, 8 epochs
    python -m benchmarks.tf_motifs --windows 1000 --epochs 2 --explain 50 --out /tmp/motifs

Trains the TF CNN on the project's simulated windows (planted CTCF instances, scores from a
motif scan), then on validation windows that hold a planted instance:

* attributions (integrated gradients with the uniform and the all-zero baseline, ISM,
  saliency) of the sum of the predicted scores: the share of each window's 20 positions
  of largest |attribution| (summed over bases; ISM: the largest |change| at the position)
  that fall inside a planted instance, against the share of positions that do (chance);
* variant effects through `variants` (VCF + FASTA, windows centred on each SNV): the
  validation windows laid end to end as one contig, one SNV in the core of planted
  instances (positions whose motif column carries > 1 bit) and one in the background
  (>= 20 bp from any instance) per window; AUROC of |delta| separating the two.

Writes benchmarks/results/tf_motifs.{json,md}.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.report import machine_facts, machine_line, writable, write_report
from experiments._cli import positive_int

RESULTS = Path(__file__).resolve().parent / "results"
TOP = 20
CORE_BITS = 1.0
BACKGROUND_GAP = 20


def planted_mask(planted, windows: np.ndarray, length: int, width: int) -> np.ndarray:
    """(len(windows), length) bool: positions inside a planted instance."""
    row = {int(w): i for i, w in enumerate(windows)}
    mask = np.zeros((len(windows), length), bool)
    for site in planted:
        if site.window in row:
            mask[row[site.window], site.start:site.start + width] = True
    return mask


def core_columns(frequencies: np.ndarray, strand: str) -> np.ndarray:
    """Offsets inside an instance whose motif column carries more than CORE_BITS bits."""
    bits = 2.0 + np.sum(frequencies * np.log2(np.clip(frequencies, 1e-9, 1.0)), axis=1)
    offsets = np.flatnonzero(bits > CORE_BITS)
    return offsets if strand == "+" else (len(bits) - 1 - offsets)[::-1]


def top_share(importance: np.ndarray, mask: np.ndarray) -> float:
    """Mean over windows of the share of the TOP most important positions inside the mask."""
    top = np.argsort(-importance, axis=1)[:, :TOP]
    return float(np.mean(np.take_along_axis(mask, top, axis=1)))


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(positive, scores))


def run(windows: int, epochs: int, explain: int, out: Path, seed: int = 0) -> dict:
    from molml_jax.data.tf_binding import load_motifs, simulate_tf_binding
    from molml_jax.pipelines import interpretation, tf_binding

    config = tf_binding.Config(simulate_windows=windows, epochs=epochs, seed=seed, out=str(out / "run"))
    start = time.perf_counter()
    summary = tf_binding.train_and_evaluate(config, progress=False)
    train_seconds = time.perf_counter() - start
    data = tf_binding.load_data(config)
    names, sequences, _, planted = simulate_tf_binding(windows, config.simulate_length, seed=config.simulate_seed,
                                                       motifs=tf_binding.motif_list(config.simulate_motifs))
    motif = load_motifs(tf_binding.motif_list(config.simulate_motifs))[0]
    with_site = {s.window for s in planted}
    chosen = np.array([i for i in data.split["val"] if int(i) in with_site][:explain])
    x = np.asarray(data.x[chosen], np.float32)
    mask = planted_mask(planted, chosen, x.shape[1], motif.width)
    result = {"windows": windows, "epochs": epochs, "explained_windows": int(len(chosen)),
              "best_val_pearson": summary["best_val_pearson"], "train_seconds": train_seconds,
              "chance_share": float(mask.mean()), "top": TOP, "attributions": {}}
    run_dir = out / "run"
    for label, method, baseline in (("integrated gradients, uniform baseline", "integrated-gradients", "uniform"),
                                    ("integrated gradients, all-zero baseline", "integrated-gradients", "zeros"),
                                    ("in-silico mutagenesis", "ism", "uniform"),
                                    ("saliency", "saliency", "uniform")):
        start = time.perf_counter()
        got = interpretation.attribute_arrays(tf_binding, run_dir, x, method=method, baseline=baseline, steps=50)
        seconds = time.perf_counter() - start
        values = got["attributions"]
        importance = np.abs(values).max(-1) if method == "ism" else np.abs(values).sum(-1)
        entry = {"top_share": top_share(importance, mask), "seconds": seconds}
        if "completeness" in got:
            entry["median_completeness"] = float(np.median(got["completeness"]))
        result["attributions"][label] = entry
    result["variants"] = _variant_effects(tf_binding, interpretation, run_dir, chosen, sequences, planted, motif,
                                          out, seed)
    return result


def _variant_effects(tf_binding, interpretation, run_dir, chosen, sequences, planted, motif, out, seed) -> dict:
    """One core and one background SNV per explained window, scored by `variants`."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    length = len(sequences[0])
    contig = "".join(sequences[i] for i in chosen)
    (out / "genome.fa").write_text(f">sim\n{contig}\n")
    rows = []
    sites = {}
    for site in planted:
        sites.setdefault(site.window, []).append(site)
    for k, window in enumerate(chosen):
        offset = k * length
        inside = np.zeros(length, bool)
        for site in sites[int(window)]:
            inside[max(0, site.start - BACKGROUND_GAP):site.start + motif.width + BACKGROUND_GAP] = True
        site = sites[int(window)][0]
        core = site.start + rng.choice(core_columns(motif.frequencies, site.strand))
        background = np.flatnonzero(~inside)
        picks = [(core, 1)] + ([(rng.choice(background), 0)] if len(background) else [])
        for position, is_core in picks:
            ref = contig[offset + position]
            alt = rng.choice([b for b in "ACGT" if b != ref])
            rows.append(("sim", offset + position + 1, f"w{window}_{'core' if is_core else 'bg'}", ref, alt, is_core))
    table = pd.DataFrame(rows, columns=["chrom", "pos", "id", "ref", "alt", "core"])
    table.drop(columns="core").to_csv(out / "snvs.tsv", sep="\t", index=False)
    start = time.perf_counter()
    interpretation.variants(tf_binding, run_dir, out / "snvs.tsv", out / "genome.fa", out / "effects.tsv")
    seconds = time.perf_counter() - start
    effects = pd.read_csv(out / "effects.tsv", sep="\t", keep_default_na=False)
    ok = effects["status"].to_numpy() == "ok"
    delta = np.abs(pd.to_numeric(effects["delta"][ok]).to_numpy())
    core = table["core"].to_numpy()[ok]
    return {"snvs": int(len(table)), "scored": int(ok.sum()), "core": int(core.sum()), "background": int((1 - core).sum()),
            "auroc_abs_delta": auroc(delta, core), "median_abs_delta_core": float(np.median(delta[core == 1])),
            "median_abs_delta_background": float(np.median(delta[core == 0])), "seconds": seconds}


def markdown(r: dict) -> str:
    lines = ["# Attributions and variant effects of a TF CNN on simulated CTCF windows",
             "",
             f"{r['windows']:,} simulated windows, {r['epochs']} epochs (best validation Pearson R "
             f"{r['best_val_pearson']:.3f}); {r['explained_windows']} validation windows holding a planted instance.",
             "",
             f"| attribution | share of the top-{r['top']} positions inside a planted instance | median "
             "completeness error | seconds |",
             "|---|---|---|---|"]
    for label, e in r["attributions"].items():
        completeness = f"{e['median_completeness']:.3g}" if "median_completeness" in e else ""
        lines.append(f"| {label} | {e['top_share']:.0%} | {completeness} | {e['seconds']:.1f} |")
    lines.append(f"| (chance: share of all positions inside an instance) | {r['chance_share']:.0%} | | |")
    v = r["variants"]
    lines += ["",
              f"Variant effects (`variants`, windows centred on each SNV): {v['core']} SNVs in motif cores "
              f"(columns > {CORE_BITS:g} bit) and {v['background']} in the background (>= {BACKGROUND_GAP} bp from "
              f"any instance): AUROC of |delta| **{v['auroc_abs_delta']:.3f}**; median |delta| "
              f"{v['median_abs_delta_core']:.3g} (core) vs {v['median_abs_delta_background']:.3g} (background); "
              f"scored in {v['seconds']:.1f} s.",
              "",
              machine_line(r["machine"]),
              ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--windows", type=positive_int, default=5000)
    parser.add_argument("--epochs", type=positive_int, default=8)
    parser.add_argument("--explain", type=positive_int, default=200, help="validation windows to explain")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    out = writable(args.out)
    with tempfile.TemporaryDirectory() as work:
        result = run(args.windows, args.epochs, args.explain, Path(work))
    result["machine"] = machine_facts()
    print(write_report(out, "tf_motifs", result, markdown))


if __name__ == "__main__":
    main()
