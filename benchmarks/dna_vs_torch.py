"""DNA binding sites, JAX pipeline vs the PyTorch reference, side by side.

    python -m benchmarks.dna_vs_torch --epochs 30 --seed 0
    python -m benchmarks.dna_vs_torch --epochs 30 --devices 2 --torch-threads 1
    python -m benchmarks.dna_vs_torch --seeds 0-15 --epochs 100    # many seeds: distributions

Runs, back to back in one process and on the same data split (seed):
  1. the JAX pipeline, `molml_jax.pipelines.dna.train_and_evaluate` (its run folder goes to
     a temporary directory and is deleted afterwards), then
  2. the PyTorch reference of the problem set (`benchmarks.torch_dna`).

Measures, for each: seconds per epoch (training plus validation, the median of the epochs
after the first: the first JAX epoch includes compilation), the ratio torch / JAX of those
medians, JAX compile seconds (first epoch minus the median), total wall time, and the test
ROC AUC after the last epoch (as the course reports it) and of the best-validation epoch.
The two runs start from different random initialisations (torch's and JAX's generators),
so their loss curves agree in shape and level, not value by value.

Writes benchmarks/results/dna_vs_torch.json (every number, both histories, the machine),
dna_vs_torch.md (a table) and dna_loss_curves.png (train / validation losses of both).

With --seeds A-B (many seeds; whether a run leaves the 0.693 plateau decides its AUC), both
frameworks train on the split of seed A and see the same batches (the JAX sweep's order,
replayed for torch), each seed starting from its own initial weights: the JAX seeds through
the pipeline's sweep (`dna.sweep`, vmapped or sequential by --parallel), the PyTorch seeds
one by one. Reports per framework the test AUC after the last epoch (mean, sd, min, max),
the fraction of runs whose validation loss left the plateau (fell under 0.6), a two-sided
Mann-Whitney U p-value for "same distribution", both wall times, and a band plot of the
loss curves (median and 10-90% per framework): dna_seeds.{json,md} and dna_seeds_bands.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.report import (epoch_seconds_after_first, machine_facts, machine_line, read_history, writable,
                               write_report, write_results)
from benchmarks.seed_stats import LEFT_PLATEAU_BELOW, compare, comparison_lines, left_plateau_epoch
from benchmarks.torch_device import CHOICES, check_torch_device, torch_unavailable_reason
from experiments._cli import positive_int
from molml_jax.process import prepare_process

RESULTS = Path(__file__).resolve().parent / "results"


def run(epochs: int, seed: int, devices: int = 1, torch_threads: int | None = None,
        results_dir: Path = RESULTS, same_start: bool = False, torch_device: str = "auto") -> dict:
    import jax
    import torch

    from benchmarks.torch_dna import run_torch_reference
    from molml_jax.pipelines.dna import Config, train_and_evaluate

    initial_params = initial_state_dict = batch_order = None
    if same_start:  # both from torch's initial weights, both through the JAX run's batches
        from benchmarks.torch_models import LSTMseq
        from molml_jax.interop import lstm_params_from_torch
        from molml_jax.train.engine import epoch_order
        from molml_jax.train.state import seed_keys

        torch.manual_seed(seed)
        initial_state_dict = LSTMseq(16).state_dict()
        initial_params = lstm_params_from_torch(initial_state_dict)
        run_rng = np.asarray(jax.random.key_data(seed_keys(seed)[1]))
        n_train = None

        def replay_jax_order(epoch):
            return epoch_order(run_rng, epoch, n_train)  # n_train is set once the JAX run has loaded the data

        batch_order = replay_jax_order

    with tempfile.TemporaryDirectory(prefix="dna_vs_torch_") as tmp:
        run_dir = Path(tmp) / "dna_jax"
        began = time.perf_counter()
        summary = train_and_evaluate(Config(epochs=epochs, seed=seed, devices=devices, out=str(run_dir)),
                                     progress=False, initial_params=initial_params)
        n_train = summary["n_train"]
        jax_wall = time.perf_counter() - began
        jax_history = read_history(run_dir / "history.csv")

    began = time.perf_counter()
    reference = run_torch_reference(epochs, seed, threads=torch_threads, device=torch_device,
                                    initial_state_dict=initial_state_dict, batch_order=batch_order)
    torch_wall = time.perf_counter() - began
    reference.pop("model")
    torch_history = reference["history"]

    jax_epoch = statistics.median(epoch_seconds_after_first(jax_history))
    torch_epoch = statistics.median(epoch_seconds_after_first(torch_history))
    result = {
        "command": f"python -m benchmarks.dna_vs_torch --epochs {epochs} --seed {seed} --devices {devices}"
                   + (f" --torch-threads {torch_threads}" if torch_threads else "")
                   + (" --same-start" if same_start else ""),
        "same_start": same_start,
        "max_abs_train_loss_difference": {
            f"first {k} epochs": max(abs(a["train_loss"] - b["train_loss"])
                                     for a, b in zip(jax_history[:k], torch_history[:k]))
            for k in (1, 10, epochs)
        },
        "epochs": epochs,
        "seed": seed,
        "n_train": summary["n_train"], "n_val": summary["n_val"], "n_test": summary["n_test"],
        "jax": {
            "median_epoch_seconds": jax_epoch,
            "first_epoch_seconds": jax_history[0]["epoch_seconds"],
            "compile_seconds": summary["compile_seconds"],
            "wall_seconds": jax_wall,
            "test_auc_last_epoch": summary["last_test_auc"],
            "test_auc_best_val": summary["test_auc"],
            "best_epoch": summary["best_epoch"],
            "final_train_loss": jax_history[-1]["train_loss"],
            "final_val_loss": jax_history[-1]["val_loss"],
            "devices": devices,
            "driver": summary["driver"],
            "history": jax_history,
        },
        "torch": {
            "median_epoch_seconds": torch_epoch,
            "first_epoch_seconds": torch_history[0]["epoch_seconds"],
            "wall_seconds": torch_wall,
            "test_auc_last_epoch": reference["test_auc"],
            "test_auc_best_val": reference["test_auc_best_val"],
            "best_epoch": reference["best_epoch"],
            "final_train_loss": torch_history[-1]["train_loss"],
            "final_val_loss": torch_history[-1]["val_loss"],
            "threads": reference["threads"],
            "device": reference["device"],
            "history": torch_history,
        },
        "speedup_torch_over_jax": torch_epoch / jax_epoch,
        "machine": machine_facts(),
    }

    suffix = "_same_start" if same_start else ""
    write_results(
        results_dir, f"dna_vs_torch{suffix}", result, markdown,
        {"JAX": jax_history, "PyTorch": torch_history}, f"dna_loss_curves{suffix}.png",
        title=f"BiLSTM on DNA binding, seed {seed}: test AUC JAX {summary['last_test_auc']:.3f}, "
              f"PyTorch {reference['test_auc']:.3f}",
    )
    return result


def parse_seeds(text: str) -> list[int]:
    """'0-15' or '3' or '0,1,2' -> consecutive seeds (the sweep trains first .. first + K - 1)."""
    import argparse as _argparse

    try:
        if "-" in text.strip().lstrip("-"):
            first, last = (int(v) for v in text.split("-", 1))
            seeds = list(range(first, last + 1))
        else:
            seeds = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise _argparse.ArgumentTypeError(f"expected seeds such as 0-15 or 0,1,2, got {text!r}") from None
    if not seeds or any(b - a != 1 for a, b in zip(seeds, seeds[1:])):
        raise _argparse.ArgumentTypeError(f"expected consecutive ascending seeds such as 0-15, got {text!r}")
    return seeds


def run_seeds(epochs: int, seeds: list[int], *, devices: int = 1, torch_threads: int | None = None,
              torch_device: str = "auto", parallel: str = "auto", results_dir: Path | None = RESULTS,
              data: str | None = None, stem: str = "dna_seeds", progress: bool = True,
              torch_skip_reason: str | None = None) -> dict:
    """Many seeds of both frameworks on one split and one batch order (see the module doc).
    data: a labeled sequences file instead of the bundled course data (e.g. a subset);
    torch_skip_reason: run JAX alone, and say this in the PyTorch column.
    Writes results_dir/{stem}.json, {stem}.md and {stem}_bands.png (unless results_dir is
    None); returns the result."""
    import jax

    from molml_jax.pipelines import dna
    from molml_jax.train.engine import epoch_order
    from molml_jax.train.state import seed_keys

    config = dna.Config(epochs=epochs, seed=seeds[0], devices=devices, data=data)
    with tempfile.TemporaryDirectory(prefix="dna_seeds_") as tmp:
        sweep = dna.sweep(dataclasses.replace(config, out=tmp), [config.lr], seeds=len(seeds),
                          parallel=parallel, progress=progress)
    jax_runs = [{"seed": row["seed"], "test_auc": row["last_test_auc"], "history": history,
                 "left_plateau_epoch": left_plateau_epoch(history)}
                for row, history in zip(sweep["rows"], sweep["histories"])]

    torch_runs, torch_wall, torch_reason = [], None, torch_skip_reason or torch_unavailable_reason()
    if torch_reason is None:
        from benchmarks.torch_dna import run_torch_reference

        order_rng = np.asarray(jax.random.key_data(seed_keys(seeds[0])[1]))  # the sweep's batches
        n_train = len(dna.load_data(config).split["train"])
        began = time.perf_counter()
        for i, seed in enumerate(seeds):
            if progress:
                print(f"PyTorch seed {seed} ({i + 1}/{len(seeds)})", file=sys.stderr, flush=True)
            reference = run_torch_reference(epochs, seeds[0], init_seed=seed, threads=torch_threads,
                                            batch_order=lambda epoch: epoch_order(order_rng, epoch, n_train),
                                            device=torch_device, data=data)
            torch_runs.append({"seed": seed, "test_auc": reference["test_auc"], "history": reference["history"],
                               "left_plateau_epoch": left_plateau_epoch(reference["history"]),
                               "device": reference["device"], "threads": reference["threads"]})
        torch_wall = time.perf_counter() - began
    return _write_seeds(epochs, seeds, devices, parallel, sweep, jax_runs, torch_runs, torch_wall,
                        torch_reason, results_dir, stem, data)


def _write_seeds(epochs, seeds, devices, parallel, sweep, jax_runs, torch_runs, torch_wall, torch_reason,
                 results_dir, stem, data) -> dict:
    from molml_jax.plots import plot_loss_bands

    def framework(runs):
        left = [r["left_plateau_epoch"] for r in runs if r["left_plateau_epoch"] is not None]
        return {"left_plateau_fraction": len(left) / len(runs),
                "left_plateau_epoch_median": float(np.median(left)) if left else None}

    jax_epoch_seconds = [row["epoch_seconds"] for row in sweep["histories"][0][1:]]
    result = {
        "command": f"python -m benchmarks.dna_vs_torch --seeds {seeds[0]}-{seeds[-1]} --epochs {epochs} "
                   f"--devices {devices} --parallel {parallel}" + (f" (data {Path(data).name})" if data else ""),
        "epochs": epochs, "seeds": seeds, "split_seed": seeds[0], "data": sweep["data"] if data else "bundled",
        "left_plateau_below": LEFT_PLATEAU_BELOW,
        "jax": {"wall_seconds": sweep["wall_seconds"], "parallel": sweep["parallel"], "devices": devices,
                "median_epoch_seconds_all_seeds": float(np.median(jax_epoch_seconds or [np.nan])),
                **framework(jax_runs), "runs": jax_runs},
        "torch": ({"wall_seconds": torch_wall, "device": torch_runs[0]["device"], "threads": torch_runs[0]["threads"],
                   **framework(torch_runs), "runs": torch_runs} if torch_runs else {"not_run": torch_reason}),
        "test_auc": (compare("test AUC after the last epoch", [r["test_auc"] for r in jax_runs],
                             [r["test_auc"] for r in torch_runs]) if torch_runs else None),
        "machine": machine_facts(),
    }
    if results_dir is None:
        return result
    write_report(results_dir, stem, result, lambda r: seeds_markdown(r, stem))
    groups = {"JAX": [r["history"] for r in jax_runs]}
    if torch_runs:
        groups["PyTorch"] = [r["history"] for r in torch_runs]
    plot_loss_bands(groups, results_dir / f"{stem}_bands.png",
                    title=f"BiLSTM on DNA binding, {len(seeds)} seeds, {epochs} epochs")
    return result


def seeds_markdown(result: dict, stem: str = "dna_seeds") -> str:
    j, t = result["jax"], result["torch"]
    n = len(result["seeds"])
    ran = "runs" in t
    pct = lambda f: f"{100 * f:.0f}%"
    lines = [f"# DNA binding BiLSTM: JAX vs PyTorch over {n} seeds ({result['epochs']} epochs)", "",
             f"`{result['command']}`", "",
             f"Both frameworks train on the split of seed {result['split_seed']} and see the same batches in the "
             "same order; each seed starts from its own initial weights (each framework's own initialiser).", "",
             "| | JAX | PyTorch |", "|---|---|---|"]
    if ran:
        lines += comparison_lines(result["test_auc"])
    else:
        a = [r["test_auc"] for r in j["runs"]]
        lines.append(f"| test AUC after the last epoch: mean (min, max) | {np.mean(a):.4f} ({min(a):.4f}, "
                     f"{max(a):.4f}) | not run: {t['not_run']} |")
    left = lambda f: (f"{pct(f['left_plateau_fraction'])}"
                      + (f" (median epoch {f['left_plateau_epoch_median']:.0f})" if f["left_plateau_epoch_median"] else ""))
    lines.append(f"| runs that left the 0.693 plateau (validation loss < {result['left_plateau_below']}) | "
                 f"{left(j)} | {left(t) if ran else '-'} |")
    lines.append(f"| wall time of all {n} seeds | {j['wall_seconds']:.1f} s ({j['parallel']}) | "
                 + (f"{t['wall_seconds']:.1f} s (one by one, {t['device']}, {t['threads']} thread(s)) |" if ran else "- |"))
    if ran:
        lines += ["", f"PyTorch / JAX wall time for the {n} seeds: **{t['wall_seconds'] / j['wall_seconds']:.2f}x**."]
    lines += ["", "| seed | test AUC JAX | test AUC PyTorch | left plateau at epoch JAX | PyTorch |", "|---|---|---|---|---|"]
    t_runs = t.get("runs") or [None] * n
    epoch = lambda r: "-" if r is None or r["left_plateau_epoch"] is None else str(r["left_plateau_epoch"])
    for a, b in zip(j["runs"], t_runs):
        lines.append(f"| {a['seed']} | {a['test_auc']:.4f} | {'-' if b is None else format(b['test_auc'], '.4f')} "
                     f"| {epoch(a)} | {epoch(b)} |")
    lines += ["", machine_line(result["machine"]), "", f"![loss bands]({stem}_bands.png)", ""]
    return "\n".join(lines)


def markdown(result: dict) -> str:
    j, t, m = result["jax"], result["torch"], result["machine"]
    compile_s = f"{j['compile_seconds']:.2f}" if j["compile_seconds"] is not None else "n/a"
    rows = [
        ("seconds per epoch (median after the first)", f"{j['median_epoch_seconds']:.3f}", f"{t['median_epoch_seconds']:.3f}"),
        ("first epoch seconds", f"{j['first_epoch_seconds']:.2f}", f"{t['first_epoch_seconds']:.2f}"),
        ("compile seconds", compile_s, "-"),
        ("total wall seconds", f"{j['wall_seconds']:.1f}", f"{t['wall_seconds']:.1f}"),
        ("test AUC, last epoch", f"{j['test_auc_last_epoch']:.4f}", f"{t['test_auc_last_epoch']:.4f}"),
        ("test AUC, best validation epoch", f"{j['test_auc_best_val']:.4f} (epoch {j['best_epoch']})",
         f"{t['test_auc_best_val']:.4f} (epoch {t['best_epoch']})"),
        ("final train / validation loss", f"{j['final_train_loss']:.4f} / {j['final_val_loss']:.4f}",
         f"{t['final_train_loss']:.4f} / {t['final_val_loss']:.4f}"),
        ("parallelism", f"{j['devices']} device(s), {j['driver']} driver", f"{t['threads']} thread(s)"),
    ]
    lines = [
        f"# DNA binding BiLSTM: JAX vs PyTorch ({result['epochs']} epochs, seed {result['seed']})",
        "",
        f"`{result['command']}`",
        "",
        "| | JAX | PyTorch |",
        "|---|---|---|",
        *(f"| {name} | {a} | {b} |" for name, a, b in rows),
        "",
        f"PyTorch / JAX time per epoch: **{result['speedup_torch_over_jax']:.2f}x**.",
        "",
        ("Both start from the same (torch-initialised) weights and see the same batches in the same "
         "order; largest |train loss difference|: "
         + ", ".join(f"{k}: {v:.2e}" for k, v in result["max_abs_train_loss_difference"].items()) + "."
         if result["same_start"] else
         "Each framework starts from its own random initialisation and batch order (same split)."),
        "",
        f"Split: {result['n_train']} train, {result['n_val']} validation, {result['n_test']} test. "
        + machine_line(m),
        "",
        f"![loss curves](dna_loss_curves{'_same_start' if result['same_start'] else ''}.png)",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.dna_vs_torch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=positive_int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", type=parse_seeds, default=None, metavar="A-B",
                        help="many seeds (e.g. 0-15): distributions of both frameworks instead of one run")
    parser.add_argument("--parallel", choices=("auto", "vmap", "sequential"), default="auto",
                        help="--seeds: how the JAX sweep trains its seeds (auto: as measured for this backend)")
    parser.add_argument("--torch-device", choices=CHOICES, default="auto",
                        help="where the PyTorch reference runs (auto: cuda when available)")
    parser.add_argument("--devices", type=positive_int, default=1,
                        help="JAX devices (on CPU: forced host devices)")
    parser.add_argument("--torch-threads", type=positive_int, default=None,
                        help="torch.set_num_threads for the reference (default: torch's own)")
    parser.add_argument("--same-start", action="store_true",
                        help="start both from torch's initial weights and feed both the same batch order")
    parser.add_argument("--results-dir", type=Path, default=RESULTS,
                        help="where to write the JSON, markdown and figure (default: benchmarks/results)")
    args = parser.parse_args(argv)
    prepare_process(args.devices)  # before JAX starts; both frameworks in this process benefit alike
    from molml_jax.errors import exit_on_user_error

    with exit_on_user_error():
        writable(args.results_dir)
        if args.seeds is None or torch_unavailable_reason() is None:  # many seeds: JAX alone is still worth it
            check_torch_device(args.torch_device)  # --torch-device cuda without CUDA fails first
        if args.seeds is not None:
            result = run_seeds(args.epochs, args.seeds, devices=args.devices, torch_threads=args.torch_threads,
                               torch_device=args.torch_device, parallel=args.parallel, results_dir=args.results_dir)
            print(seeds_markdown(result))
            return
        result = run(args.epochs, args.seed, args.devices, args.torch_threads, args.results_dir,
                     args.same_start, args.torch_device)
    print(markdown(result))


if __name__ == "__main__":
    main()
