"""Nucleus segmentation: the JAX pipeline vs the course's PyTorch code, same split and seed.

    python -m benchmarks.segmentation_vs_torch                 # 20 epochs on the course data, seed 0
    python -m benchmarks.segmentation_vs_torch --seeds 0,1,2   # three seeds: split, init and batches
    python -m benchmarks.segmentation_vs_torch --epochs 3      # a quick look

Runs in one process on the same images and the same 70/10/20 split (the JAX pipeline's
`load_data`): the JAX pipeline (`molml_jax.pipelines.segmentation.train_and_evaluate`, run
folder in a temp dir, checkpoints included) and the PyTorch reference
(`benchmarks.torch_segmentation.run_torch_reference`, no checkpoints), each testing the
weights of its lowest-validation-loss epoch. With several seeds (each its own split,
initialisation and batch order, the same for both frameworks) the runs alternate JAX,
PyTorch, JAX, ... Reports seconds per epoch (median over all runs of the epochs after each
run's first, which includes compilation) and their ratio, test Dice / IoU / DSB-2018 mAP
per seed and their means, and plots the first seed's loss curves of both in one PNG; with
several seeds also the spread of test Dice (mean ± sd, min, max), a two-sided Mann-Whitney U
p-value for "same distribution", and a band plot of the loss curves (median and 10-90%).
Writes benchmarks/results/segmentation_vs_torch.{json,md}, segmentation_loss_curves.png and
segmentation_bands.png.
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
from benchmarks.seed_stats import compare, comparison_lines
from benchmarks.torch_device import CHOICES, check_torch_device
from experiments._cli import positive_int
from molml_jax.process import prepare_process

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parent.parent


def _shown(path: str) -> str:
    """A data path as results files show it: repo-relative when inside the repository."""
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return Path(path).name


def one_seed(config, *, torch_device="auto", torch_threads: int | None = None,
             run_torch: bool = True) -> tuple[dict, dict | None]:
    """(JAX result, PyTorch result or None) of one config (its seed decides the split, the
    initialisation and the batches of both): test metrics, best epoch, history, wall time."""
    from molml_jax.pipelines import segmentation as seg

    data = seg.load_data(config)
    with tempfile.TemporaryDirectory(prefix="seg_vs_torch_") as tmp:
        began = time.perf_counter()
        summary = seg.train_and_evaluate(dataclasses.replace(config, out=str(Path(tmp) / "jax")), progress=False)
        jax_wall = time.perf_counter() - began
        history = read_history(Path(tmp) / "jax" / "history.csv")
    info = {"data": _shown(data.source), "n_train": len(data.split["train"]), "n_val": len(data.split["val"]),
            "n_test": len(data.split["test"]), "image_shape": list(data.images.shape[1:])}
    jax_result = {"seed": config.seed, "wall_seconds": jax_wall, "compile_seconds": summary["compile_seconds"],
                  "driver": summary["driver"], "history": history, **info,
                  **{k: summary[k] for k in ("best_epoch", "best_val_loss", "test_dice", "test_iou", "test_map")}}
    if not run_torch:
        return jax_result, None
    from benchmarks.torch_segmentation import run_torch_reference

    began = time.perf_counter()
    reference = run_torch_reference(data.images, data.masks, data.split, epochs=config.epochs, lr=config.lr,
                                    batch_size=config.batch_size, rotation=config.rotation, seed=config.seed,
                                    threads=torch_threads, device=torch_device)
    torch_result = {"seed": config.seed, "wall_seconds": time.perf_counter() - began,
                    "threads": reference["threads"], "device": reference["device"], "history": reference["history"],
                    **{k: reference[k] for k in ("best_epoch", "best_val_loss", "test_dice", "test_iou", "test_map")}}
    return jax_result, torch_result


def run(epochs: int, seeds: list[int], devices: int, torch_threads: int | None, results_dir: Path,
        torch_device: str = "auto") -> dict:
    import numpy as np

    from molml_jax.pipelines import segmentation as seg
    from molml_jax.plots import plot_loss_bands

    runs = [one_seed(seg.Config(epochs=epochs, seed=seed, devices=devices), torch_device=torch_device,
                     torch_threads=torch_threads) for seed in seeds]
    jax_runs, torch_runs = [r[0] for r in runs], [r[1] for r in runs]
    jax_times = [t for r in jax_runs for t in epoch_seconds_after_first(r["history"])]
    torch_times = [t for r in torch_runs for t in epoch_seconds_after_first(r["history"])]
    jax_epoch, torch_epoch = statistics.median(jax_times), statistics.median(torch_times)
    mean = lambda rs, k: float(np.mean([r[k] for r in rs]))
    first = jax_runs[0]
    result = {
        "command": f"python -m benchmarks.segmentation_vs_torch --epochs {epochs} "
                   f"--seeds {','.join(map(str, seeds))} --devices {devices}",
        **{k: first[k] for k in ("data", "n_train", "n_val", "n_test", "image_shape")},
        "jax": {"median_epoch_seconds": jax_epoch, "epoch_seconds": jax_times, "devices": devices,
                "driver": first["driver"], "compile_seconds": first["compile_seconds"],
                **{f"mean_{k}": mean(jax_runs, k) for k in ("test_dice", "test_iou", "test_map")},
                "runs": jax_runs},
        "torch": {"median_epoch_seconds": torch_epoch, "epoch_seconds": torch_times,
                  "threads": torch_runs[0]["threads"], "device": torch_runs[0]["device"],
                  **{f"mean_{k}": mean(torch_runs, k) for k in ("test_dice", "test_iou", "test_map")},
                  "runs": torch_runs},
        "speedup_torch_over_jax": torch_epoch / jax_epoch,
        "test_dice": compare("test Dice (best-validation epoch)", [r["test_dice"] for r in jax_runs],
                             [r["test_dice"] for r in torch_runs]),
        "machine": machine_facts(),
    }
    write_results(results_dir, "segmentation_vs_torch", result, markdown,
                  {"JAX": first["history"], "PyTorch": torch_runs[0]["history"]}, "segmentation_loss_curves.png",
                  title=f"U-Net, Dice loss, seed {seeds[0]}: test Dice JAX {first['test_dice']:.3f}, "
                                f"PyTorch {torch_runs[0]['test_dice']:.3f}")
    if len(seeds) > 1:
        plot_loss_bands({"JAX": [r["history"] for r in jax_runs], "PyTorch": [r["history"] for r in torch_runs]},
                        results_dir / "segmentation_bands.png",
                        title=f"U-Net, Dice loss, {len(seeds)} seeds, {epochs} epochs")
    return result


def markdown(result: dict) -> str:
    j, t, m = result["jax"], result["torch"], result["machine"]
    h, w = result["image_shape"]
    lines = [
        "# Nucleus segmentation U-Net: JAX vs PyTorch", "", f"`{result['command']}`", "",
        f"Data: {result['data']}, {h}x{w} images ({result['n_train']} train, {result['n_val']} validation, "
        f"{result['n_test']} test for seed {j['runs'][0]['seed']}; each seed's split is the same for both).", "",
        "| seed | best epoch JAX / PyTorch | test Dice JAX | test Dice PyTorch | test IoU JAX | test IoU PyTorch "
        "| DSB mAP JAX | DSB mAP PyTorch |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for a, b in zip(j["runs"], t["runs"]):
        lines.append(f"| {a['seed']} | {a['best_epoch']} / {b['best_epoch']} | {a['test_dice']:.4f} | "
                     f"{b['test_dice']:.4f} | {a['test_iou']:.4f} | {b['test_iou']:.4f} | {a['test_map']:.4f} | "
                     f"{b['test_map']:.4f} |")
    if len(j["runs"]) > 1:
        lines.append(f"| mean | | **{j['mean_test_dice']:.4f}** | **{t['mean_test_dice']:.4f}** | "
                     f"{j['mean_test_iou']:.4f} | {t['mean_test_iou']:.4f} | {j['mean_test_map']:.4f} | "
                     f"{t['mean_test_map']:.4f} |")
    lines += [
        "", "| | JAX | PyTorch |", "|---|---|---|",
        f"| seconds per epoch (median of {len(j['epoch_seconds'])} epochs after each run's first) | "
        f"{j['median_epoch_seconds']:.2f} | {t['median_epoch_seconds']:.2f} |",
        f"| compile seconds | {j['compile_seconds'] or 0:.1f} | - |",
        f"| parallelism | {j['devices']} device(s), {j['driver']} driver | {t.get('device', 'cpu')}, "
        f"{t['threads']} thread(s) |",
        *(comparison_lines(result["test_dice"]) if len(j["runs"]) > 1 else []),
        "", f"PyTorch / JAX time per epoch: **{result['speedup_torch_over_jax']:.2f}x**.", "",
        machine_line(m), "", "![loss curves](segmentation_loss_curves.png)", "",
        *(["![loss bands](segmentation_bands.png)", ""] if len(j["runs"]) > 1 else []),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.segmentation_vs_torch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=positive_int, default=20)
    parser.add_argument("--seeds", type=lambda text: [int(v) for v in text.split(",") if v.strip()],
                        default=[0], help="comma-separated seeds (default 0)")
    parser.add_argument("--devices", type=positive_int, default=1)
    parser.add_argument("--torch-threads", type=positive_int, default=None)
    parser.add_argument("--torch-device", choices=CHOICES, default="auto",
                        help="where the PyTorch reference runs (auto: cuda when available)")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    prepare_process(args.devices)  # both frameworks in this process benefit alike
    from molml_jax.errors import exit_on_user_error

    with exit_on_user_error():
        writable(args.results_dir)
        check_torch_device(args.torch_device)
        result = run(args.epochs, args.seeds, args.devices, args.torch_threads, args.results_dir,
                     args.torch_device)
    print(markdown(result))


if __name__ == "__main__":
    main()
