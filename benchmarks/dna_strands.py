"""Both strands for the DNA classifier: test and validation AUC with and without
`--rc-augment` (training) and `--rc-average` (prediction), per seed and as an ensemble.

    python -m benchmarks.dna_strands                       # bundled data, seeds 0-2, 60 epochs
    python -m benchmarks.dna_strands --seeds 2 --epochs 5 --out /tmp/strands

The bundled course data is prepared once (`prepare`, split seed 0), so every run, whatever
its seed (initial weights, batch order, augmentation coins), is tested on the same held-out
sequences, and an ensemble of the seeds never saw its test sequences. AUCs are those of each
run's best-validation checkpoint; the ensemble averages the members' logits.
Writes benchmarks/results/dna_strands.{json,md}.
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


def run(seeds: int, epochs: int, work: Path) -> dict:
    from molml_jax.metrics.classification import roc_auc
    from molml_jax.pipelines import dna

    dna.prepare(dna.Config(seed=0), work / "data")
    data = dna.load_data(dna.Config(data=str(work / "data")))
    parts = {}
    for part in ("val", "test"):
        arrays = data.arrays(part)
        parts[part] = (np.asarray(arrays["x"]), arrays.get("length"), np.asarray(arrays["y"]))
    rows, groups = [], {}
    for augment in (False, True):
        for seed in range(seeds):
            out = work / f"{'rc' if augment else 'plain'}_s{seed}"
            start = time.perf_counter()
            dna.train_and_evaluate(dna.Config(data=str(work / "data"), epochs=epochs, seed=seed, rc_augment=augment,
                                              out=str(out)), progress=False)
            row = {"rc_augment": augment, "seed": seed, "train_seconds": time.perf_counter() - start}
            row.update(_aucs(dna, roc_auc, out, parts))
            rows.append(row)
            groups.setdefault(augment, []).append(str(out))
    ensembles = []
    for augment, members in groups.items():
        ensembles.append({"rc_augment": augment, "members": len(members),
                          **_aucs(dna, roc_auc, ",".join(members), parts)})
    return {"seeds": seeds, "epochs": epochs, "n_val": int(len(parts["val"][2])), "n_test": int(len(parts["test"][2])),
            "runs": rows, "ensembles": ensembles}


def _aucs(dna, roc_auc, run, parts) -> dict:
    result = {}
    for part, (x, lengths, y) in parts.items():
        for average in (False, True):
            p = dna.predict_arrays(run, x, lengths=lengths, rc_average=average)
            result[f"{part}_auc{'_rc_average' if average else ''}"] = float(roc_auc(y, p))
    return result


def _mean_sd(values) -> str:
    values = np.asarray(values, float)
    return f"{values.mean():.4f} ± {values.std(ddof=1):.4f}" if len(values) > 1 else f"{values[0]:.4f}"


def markdown(r: dict) -> str:
    lines = ["# DNA classifier: both strands (bundled course data)", "",
             f"{r['seeds']} seeds per setting, {r['epochs']} epochs, best-validation checkpoints; one split for every "
             f"run ({r['n_val']:,} validation, {r['n_test']:,} test sequences). Mean ± sd over seeds, then the "
             "ensemble of the seeds (mean of logits).", "",
             "| training | prediction | validation AUC | test AUC | ensemble validation AUC | ensemble test AUC |",
             "|---|---|---|---|---|---|"]
    for augment in (False, True):
        runs = [row for row in r["runs"] if row["rc_augment"] == augment]
        ensemble = next(e for e in r["ensembles"] if e["rc_augment"] == augment)
        for average in (False, True):
            suffix = "_rc_average" if average else ""
            lines.append(f"| {'--rc-augment' if augment else 'forward strand'} | "
                         f"{'--rc-average' if average else 'forward strand'} | "
                         f"{_mean_sd([row['val_auc' + suffix] for row in runs])} | "
                         f"{_mean_sd([row['test_auc' + suffix] for row in runs])} | "
                         f"{ensemble['val_auc' + suffix]:.4f} | {ensemble['test_auc' + suffix]:.4f} |")
    lines += ["", machine_line(r["machine"]), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=positive_int, default=3)
    parser.add_argument("--epochs", type=positive_int, default=60)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    out = writable(args.out)
    with tempfile.TemporaryDirectory() as work:
        result = run(args.seeds, args.epochs, Path(work))
    result["machine"] = machine_facts()
    print(write_report(out, "dna_strands", result, markdown))


if __name__ == "__main__":
    main()
