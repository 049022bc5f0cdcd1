"""DNA binding sites, JAX pipeline vs the PyTorch reference, side by side.

    python -m benchmarks.dna_vs_torch --epochs 30 --seed 0
    python -m benchmarks.dna_vs_torch --epochs 30 --devices 2 --torch-threads 1

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
"""

from __future__ import annotations

import argparse
import csv
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.report import machine_facts, machine_line, write_results
from experiments._cli import positive_int
from molml_jax.process import prepare_process

RESULTS = Path(__file__).resolve().parent / "results"


def _read_history(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return [{k: (int(v) if k == "epoch" else float(v)) for k, v in row.items()} for row in csv.DictReader(handle)]


def _median_after_first(history: list[dict]) -> float:
    times = [row["epoch_seconds"] for row in history[1:]] or [history[0]["epoch_seconds"]]
    return statistics.median(times)


def run(epochs: int, seed: int, devices: int = 1, torch_threads: int | None = None,
        results_dir: Path = RESULTS, same_start: bool = False) -> dict:
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
        jax_history = _read_history(run_dir / "history.csv")

    began = time.perf_counter()
    reference = run_torch_reference(epochs, seed, threads=torch_threads,
                                    initial_state_dict=initial_state_dict, batch_order=batch_order)
    torch_wall = time.perf_counter() - began
    reference.pop("model")
    torch_history = reference["history"]

    jax_epoch = _median_after_first(jax_history)
    torch_epoch = _median_after_first(torch_history)
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
        result = run(args.epochs, args.seed, args.devices, args.torch_threads, args.results_dir,
                     args.same_start)
    print(markdown(result))


if __name__ == "__main__":
    main()
