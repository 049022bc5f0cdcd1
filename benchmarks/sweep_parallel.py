"""Sweeps: vmapped (one compiled program) vs sequential configurations, per pipeline, on this
machine's backend. This is the measurement behind each pipeline's SWEEP_PARALLEL table
(what `--parallel auto` picks).

    python -m benchmarks.sweep_parallel                                  # all three, defaults below
    python -m benchmarks.sweep_parallel --pipelines dna --seeds 8 --epochs 20

Each pipeline's sweep runs with parallel=vmap, sequential and auto, alternating in one
process on the same data (the bundled course data; simulated CTCF windows for tf_binding),
early stopping off so that every configuration trains every epoch. Reports wall seconds
(compilation included, as a user waits for it) and the sequential / vmap ratio.
Writes benchmarks/results/sweep_parallel.{json,md}.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

from benchmarks.report import machine_facts, machine_line, write_report
from experiments._cli import positive_int, rates
from molml_jax.process import prepare_process

RESULTS = Path(__file__).resolve().parent / "results"
# per pipeline: the learning rates, seeds per rate and epochs of the default measurement
DEFAULTS = {
    "dna": ([1e-2], 8, 20),
    "tf_binding": ([1e-2, 1e-3, 1e-4], 1, 3),
    "segmentation": ([1e-3, 3e-4], 1, 2),
}


def measure(name: str, lrs, seeds: int, epochs: int) -> dict:
    import importlib

    pipeline = importlib.import_module(f"molml_jax.pipelines.{name}")
    base = dataclasses.replace(pipeline.Config(), epochs=epochs, early_stopping_patience=None)
    walls = {}
    for mode in ("sequential", "vmap", "auto"):
        with tempfile.TemporaryDirectory(prefix=f"sweep_{name}_") as tmp:
            began = time.perf_counter()
            result = pipeline.sweep(dataclasses.replace(base, out=tmp), lrs, seeds=seeds, parallel=mode, progress=False)
            walls[mode] = {"wall_seconds": time.perf_counter() - began, "ran": result["parallel"],
                           "mean_best_val_loss": sum(r["best_val_loss"] for r in result["rows"]) / len(result["rows"])}
        print(f"{name} {mode:10s} ({walls[mode]['ran']}): {walls[mode]['wall_seconds']:.1f} s", flush=True)
    return {"pipeline": name, "lrs": list(lrs), "seeds": seeds, "epochs": epochs,
            "configurations": len(lrs) * seeds, **{f"{m}": v for m, v in walls.items()},
            "sequential_over_vmap": walls["sequential"]["wall_seconds"] / walls["vmap"]["wall_seconds"]}


def markdown(result: dict) -> str:
    lines = ["# Sweeps: vmapped vs sequential configurations", "", machine_line(result["machine"]), "",
             "| pipeline | configurations | epochs | sequential (s) | vmap (s) | auto (s, runs) | sequential / vmap |",
             "|---|---|---|---|---|---|---|"]
    for r in result["pipelines"]:
        lines.append(f"| {r['pipeline']} | {r['configurations']} ({len(r['lrs'])} rates x {r['seeds']} seeds) | "
                     f"{r['epochs']} | {r['sequential']['wall_seconds']:.1f} | {r['vmap']['wall_seconds']:.1f} | "
                     f"{r['auto']['wall_seconds']:.1f} ({r['auto']['ran']}) | {r['sequential_over_vmap']:.2f} |")
    lines += ["", "Wall time of the whole sweep, compilation included; one run of each, in this order. "
              "A ratio above 1 means vmap is faster."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipelines", default="dna,tf_binding,segmentation")
    parser.add_argument("--lrs", type=rates, help="learning rates (default: per pipeline, see DEFAULTS)")
    parser.add_argument("--seeds", type=positive_int, help="seeds per rate (default: per pipeline)")
    parser.add_argument("--epochs", type=positive_int, help="epochs (default: per pipeline)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    prepare_process(1)

    measured = []
    for name in args.pipelines.split(","):
        lrs, seeds, epochs = DEFAULTS[name]
        measured.append(measure(name, args.lrs or lrs, args.seeds or seeds, args.epochs or epochs))
    result = {"machine": machine_facts(), "pipelines": measured}
    print(write_report(args.out, "sweep_parallel", result, markdown))


if __name__ == "__main__":
    main()
