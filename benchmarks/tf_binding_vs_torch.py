"""TF-binding CNN: JAX pipeline vs the study's PyTorch code, and vmapped vs sequential sweeps.

    python -m benchmarks.tf_binding_vs_torch --epochs 5 --windows 5000          # one rate, both frameworks
    python -m benchmarks.tf_binding_vs_torch --epochs 5 --sweep 1e-2,1e-3,1e-4  # + sweep timings

Runs in one process on the same simulated windows and split, alternating --repeats times
(JAX, PyTorch, JAX, PyTorch, ...: this shared machine's speed drifts by 10-20% over a
minute, so back-to-back blocks would measure the drift): the JAX pipeline
(`molml_jax.pipelines.tf_binding.train_and_evaluate`, run folder in a temp dir, checkpoints
included), the PyTorch reference (`benchmarks.torch_tf_binding`, no checkpoints), and with
--sweep the JAX sweep with --parallel vmap and sequential. Reports seconds per epoch (the
median over all repeats of the epochs after each run's first, which includes compilation),
the torch / JAX ratio, and the first repeat's best validation loss and Pearson R.
Writes benchmarks/results/tf_binding_vs_torch.{json,md} and tf_binding_loss_curves.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.report import (epoch_seconds_after_first, machine_facts, machine_line, read_history, writable,
                               write_results)
from benchmarks.torch_device import CHOICES, check_torch_device
from experiments._cli import positive_int
from molml_jax.process import prepare_process

RESULTS = Path(__file__).resolve().parent / "results"


def one_seed(config, data, *, torch_device="auto", torch_threads: int | None = None,
             run_torch: bool = True) -> tuple[dict, dict | None]:
    """One JAX run of `config` (run folder in a temp dir) and the PyTorch reference on the same
    windows and split (data = tf.load_data(config)): per framework {'summary' / result,
    'history', 'wall_seconds'} (None for PyTorch unless run_torch)."""
    from molml_jax.pipelines import tf_binding as tf

    with tempfile.TemporaryDirectory(prefix="tf_vs_torch_") as tmp:
        began = time.perf_counter()
        summary = tf.train_and_evaluate(dataclasses.replace(config, out=str(Path(tmp) / "jax")), progress=False)
        jax_run = {"summary": summary, "wall_seconds": time.perf_counter() - began,
                   "history": read_history(Path(tmp) / "jax" / "history.csv")}
    if not run_torch:
        return jax_run, None
    from benchmarks.torch_tf_binding import run_torch_reference

    began = time.perf_counter()
    reference = run_torch_reference(data.x, data.y, data.split["train"], data.split["val"], lr=config.lr,
                                    epochs=config.epochs, seed=config.seed, threads=torch_threads,
                                    device=torch_device, patience=config.early_stopping_patience or config.epochs)
    reference.pop("model")
    return jax_run, {**reference, "wall_seconds": time.perf_counter() - began}


def run(epochs: int, windows: int, lr: float, seed: int, devices: int, torch_threads: int | None,
        sweep_rates: list[float] | None, results_dir: Path, repeats: int = 2, torch_device: str = "auto") -> dict:
    from molml_jax.pipelines import tf_binding as tf

    config = tf.Config(simulate_windows=windows, epochs=epochs, lr=lr, seed=seed, devices=devices)
    data = tf.load_data(config)
    jax_times, torch_times = [], []
    for repeat in range(repeats):
        jax_run, torch_run = one_seed(config, data, torch_device=torch_device, torch_threads=torch_threads)
        jax_times += epoch_seconds_after_first(jax_run["history"])
        torch_times += epoch_seconds_after_first(torch_run["history"])
        if repeat == 0:
            summary, jax_history, jax_wall = jax_run["summary"], jax_run["history"], jax_run["wall_seconds"]
            reference, torch_wall = torch_run, torch_run["wall_seconds"]
    jax_epoch, torch_epoch = statistics.median(jax_times), statistics.median(torch_times)
    result = {
        "command": f"python -m benchmarks.tf_binding_vs_torch --epochs {epochs} --windows {windows} "
                   f"--lr {lr:g} --seed {seed} --devices {devices} --repeats {repeats}"
                   + (f" --sweep {','.join(f'{r:g}' for r in sweep_rates)}" if sweep_rates else ""),
        "data": data.source, "n_train": len(data.split["train"]), "n_val": len(data.split["val"]),
        "repeats": repeats,
        "jax": {"median_epoch_seconds": jax_epoch, "epoch_seconds": jax_times,
                "compile_seconds": summary["compile_seconds"],
                "wall_seconds": jax_wall, "best_val_loss": summary["best_val_loss"],
                "best_val_pearson": summary["best_val_pearson"], "best_epoch": summary["best_epoch"],
                "driver": summary["driver"], "devices": devices, "history": jax_history},
        "torch": {"median_epoch_seconds": torch_epoch, "epoch_seconds": torch_times, "wall_seconds": torch_wall,
                  "best_val_loss": reference["best_val_loss"], "best_val_pearson": reference["best_val_pearson"],
                  "best_epoch": reference["best_epoch"], "threads": reference["threads"],
                  "device": reference["device"], "history": reference["history"]},
        "speedup_torch_over_jax": torch_epoch / jax_epoch,
        "machine": machine_facts(),
    }
    if sweep_rates:
        result["sweep"] = {}
        for mode in ("sequential", "vmap"):
            with tempfile.TemporaryDirectory(prefix="tf_sweep_") as tmp:
                out = tf.sweep(tf.Config(**{**config.__dict__, "out": tmp}), sweep_rates,
                               parallel=mode, progress=False)
            result["sweep"][mode] = {"wall_seconds": out["wall_seconds"], "table": out["table"]}
        result["sweep"]["vmap_over_sequential_time"] = (
            result["sweep"]["vmap"]["wall_seconds"] / result["sweep"]["sequential"]["wall_seconds"])
    write_results(results_dir, "tf_binding_vs_torch", result, markdown,
                  {"JAX": jax_history, "PyTorch": reference["history"]}, "tf_binding_loss_curves.png",
                  title=f"TF-binding CNN, lr {lr:g}: validation R JAX {summary['best_val_pearson']:.3f}, "
                                f"PyTorch {reference['best_val_pearson']:.3f}")
    return result


def markdown(result: dict) -> str:
    j, t, m = result["jax"], result["torch"], result["machine"]
    lines = [
        "# TF-binding CNN: JAX vs PyTorch", "", f"`{result['command']}`", "",
        f"Data: {result['data']} ({result['n_train']} train, {result['n_val']} validation).", "",
        "| | JAX | PyTorch |", "|---|---|---|",
        f"| seconds per epoch (median of {len(j['epoch_seconds'])} epochs, {result['repeats']} alternating runs each) | {j['median_epoch_seconds']:.2f} | {t['median_epoch_seconds']:.2f} |",
        f"| compile seconds | {j['compile_seconds'] or 0:.1f} | - |",
        f"| best validation loss | {j['best_val_loss']:.4f} (epoch {j['best_epoch']}) | {t['best_val_loss']:.4f} (epoch {t['best_epoch']}) |",
        f"| best-epoch validation Pearson R | {j['best_val_pearson']:.4f} | {t['best_val_pearson']:.4f} |",
        f"| parallelism | {j['devices']} device(s), {j['driver']} driver | {t.get('device', 'cpu')}, {t['threads']} thread(s) |",
        "", f"PyTorch / JAX time per epoch: **{result['speedup_torch_over_jax']:.2f}x**.", "",
    ]
    if "sweep" in result:
        s = result["sweep"]
        lines += ["## Sweep: one vmapped program vs one run per rate", "",
                  "| learning rate | loss (sequential) | loss (vmap) | Pearson R (sequential) | Pearson R (vmap) |",
                  "|---|---|---|---|---|"]
        for a, b in zip(s["sequential"]["table"], s["vmap"]["table"]):
            lines.append(f"| {a['lr']:g} | {a['best_val_loss']:.4f} | {b['best_val_loss']:.4f} | "
                         f"{a['best_val_pearson']:.4f} | {b['best_val_pearson']:.4f} |")
        lines += ["", f"Wall time: sequential {s['sequential']['wall_seconds']:.1f} s, vmap "
                      f"{s['vmap']['wall_seconds']:.1f} s (vmap / sequential = {s['vmap_over_sequential_time']:.2f}).", ""]
    lines += [machine_line(m), "", "![loss curves](tf_binding_loss_curves.png)", ""]
    return "\n".join(lines)


def _rates(text):
    return [float(r) for r in text.split(",") if r.strip()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tf_binding_vs_torch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=positive_int, default=5)
    parser.add_argument("--windows", type=positive_int, default=5000)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--devices", type=positive_int, default=1)
    parser.add_argument("--torch-threads", type=positive_int, default=None)
    parser.add_argument("--torch-device", choices=CHOICES, default="auto",
                        help="where the PyTorch reference runs (auto: cuda when available)")
    parser.add_argument("--sweep", type=_rates, default=None, metavar="RATES")
    parser.add_argument("--repeats", type=positive_int, default=2,
                        help="alternating JAX / PyTorch runs whose epoch times are pooled (default 2)")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    prepare_process(args.devices)  # both frameworks in this process benefit alike
    from molml_jax.errors import exit_on_user_error

    with exit_on_user_error():
        writable(args.results_dir)
        check_torch_device(args.torch_device)
        result = run(args.epochs, args.windows, args.lr, args.seed, args.devices, args.torch_threads,
                     args.sweep, args.results_dir, args.repeats, args.torch_device)
    print(markdown(result))


if __name__ == "__main__":
    main()
