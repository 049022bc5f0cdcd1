"""The benchmark suite: the three pipelines, JAX vs the PyTorch references, on this machine.

    python -m benchmarks.suite --quick                 # about two minutes on 2 CPU cores
    python -m benchmarks.suite                         # course-sized runs (use an accelerator)
    python -m benchmarks.suite --pipelines dna --seeds 8 --out /tmp/suite

JAX runs on its default backend. PyTorch runs on the same kind of device (`--torch-device
auto`): the CPU next to XLA:CPU, CUDA next to a GPU; where torch has no such device (a TPU,
or a CUDA-less torch next to a GPU) or torch is not installed, its columns say why and the
JAX columns still run. Both frameworks see the same data, split and seeds:

  dna           BiLSTM, test AUC after the last epoch; the JAX seeds through the pipeline's
                sweep (`benchmarks.dna_vs_torch.run_seeds`: same batches for both)
  tf_binding    residual CNN on simulated windows, best-epoch validation Pearson R
  segmentation  U-Net with rotations, test Dice of the best-validation epoch

--seeds K trains seeds 0..K-1 of each and adds the spread, a two-sided Mann-Whitney U p-value
and a loss band plot. Writes DIR/report.md (one table, the machine), DIR/report.json
(every number and history) and DIR/<pipeline>_loss_curves.png (first seed, both frameworks);
DIR defaults to benchmarks/results/suite_<backend>[_quick].
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.report import epoch_seconds_after_first, machine_facts, machine_line, writable, write_report
from benchmarks.torch_device import CHOICES, torch_unavailable_reason
from experiments._cli import positive_int
from molml_jax.process import prepare_process

PIPELINES = ("dna", "tf_binding", "segmentation")
RESULTS = Path(__file__).resolve().parent / "results"

# Data sizes and epochs: quick (a test runs it) and course-sized.
SIZES = {
    "quick": {"dna": {"epochs": 4, "sequences": 2000}, "tf_binding": {"epochs": 4, "windows": 600},
              "segmentation": {"epochs": 3, "size": 64}},
    "full": {"dna": {"epochs": 100, "sequences": None}, "tf_binding": {"epochs": 20, "windows": 5000},
             "segmentation": {"epochs": 20, "size": None}},
}
METRICS = {"dna": "test AUC (last epoch)", "tf_binding": "validation Pearson R (best epoch)",
           "segmentation": "test Dice (best epoch)"}


class Progress:
    """'[suite 12s] message' lines on stderr, so a long run shows where it is."""

    def __init__(self, enabled: bool = True):
        self.began, self.enabled = time.perf_counter(), enabled

    def __call__(self, message: str) -> None:
        if self.enabled:
            print(f"[suite {time.perf_counter() - self.began:5.0f}s] {message}", file=sys.stderr, flush=True)


def torch_plan(requested: str, backend: str) -> tuple[str | None, str | None]:
    """(torch device name, None) for the PyTorch side, or (None, why it does not run).

    auto: the kind of device JAX runs on; an explicit cpu / cuda is taken as asked (and an
    unavailable cuda is an InputError before anything runs)."""
    from benchmarks.torch_device import resolve_torch_device

    reason = torch_unavailable_reason()
    if reason is not None:
        return None, reason
    if requested != "auto":
        return resolve_torch_device(requested).type, None
    import torch

    if backend == "cpu":
        return "cpu", None
    if backend == "gpu":
        if torch.cuda.is_available():
            return "cuda", None
        return None, f"torch {torch.__version__} sees no CUDA device (JAX runs on the GPU; pass --torch-device cpu to compare anyway)"
    return None, f"PyTorch has no {backend} device here (JAX runs on the {backend})"


def _framework(runs: list[dict], device: str, *, per_epoch_divisor: int = 1, compile_seconds=None,
               wall_seconds=None) -> dict:
    """A framework's column: metric per seed, median seconds per epoch (after each run's first)."""
    times = [t / per_epoch_divisor for r in runs for t in epoch_seconds_after_first(r["history"])]
    return {"values": [r["value"] for r in runs], "median_epoch_seconds": statistics.median(times),
            "compile_seconds": compile_seconds, "device": device,
            "wall_seconds": wall_seconds if wall_seconds is not None else sum(r["wall_seconds"] for r in runs),
            "runs": runs}


def dna_case(size: dict, seeds: list[int], torch_device: str | None, torch_reason: str | None,
             work: Path, say: Progress) -> dict:
    """The BiLSTM on the course data (a random subset of `sequences` rows in quick mode)."""
    import pandas as pd

    from benchmarks.dna_vs_torch import run_seeds
    from molml_jax.data import default_dna_csv

    data = None
    if size["sequences"]:
        table = pd.read_csv(default_dna_csv())
        data = str(work / "dna_subset.csv")
        table.sample(n=min(size["sequences"], len(table)), random_state=0).to_csv(data, index=False)
    say(f"dna: {len(seeds)} seed(s) x {size['epochs']} epochs, JAX sweep then PyTorch")
    result = run_seeds(size["epochs"], seeds, torch_device=torch_device or "cpu", results_dir=None, data=data,
                       progress=say.enabled, torch_skip_reason=torch_reason)
    j, t = result["jax"], result["torch"]
    first = j["runs"][0]["history"]
    compile_seconds = first[0]["epoch_seconds"] - statistics.median(epoch_seconds_after_first(first)) if len(first) > 1 else None
    jax_runs = [{"seed": r["seed"], "value": r["test_auc"], "history": r["history"]} for r in j["runs"]]
    case = {"jax": _framework(jax_runs, _jax_device(), compile_seconds=compile_seconds, wall_seconds=j["wall_seconds"],
                              per_epoch_divisor=len(seeds) if j["parallel"] == "vmap" else 1),
            "notes": f"JAX seeds trained by the sweep ({j['parallel']}); its epoch time is per seed"}
    if "runs" in t:
        torch_runs = [{"seed": r["seed"], "value": r["test_auc"], "history": r["history"]} for r in t["runs"]]
        case["torch"] = _framework(torch_runs, t["device"], wall_seconds=t["wall_seconds"])
    else:
        case["torch"] = {"not_run": t["not_run"]}
    case["left_plateau_fraction"] = {"jax": j["left_plateau_fraction"], "torch": t.get("left_plateau_fraction")}
    return case


def tf_case(size: dict, seeds: list[int], torch_device: str | None, torch_reason: str | None,
            work: Path, say: Progress) -> dict:
    """The residual CNN on `windows` simulated windows."""
    from benchmarks.tf_binding_vs_torch import one_seed
    from molml_jax.pipelines import tf_binding as tf

    jax_runs, torch_runs, compile_seconds = [], [], None
    for seed in seeds:
        say(f"tf_binding: seed {seed}, {size['windows']} windows x {size['epochs']} epochs")
        config = tf.Config(simulate_windows=size["windows"], epochs=size["epochs"], seed=seed)
        jax_run, torch_run = one_seed(config, tf.load_data(config), torch_device=torch_device,
                                      run_torch=torch_device is not None)
        summary = jax_run["summary"]
        steps = -(-summary["n_train"] // config.batch_size)
        compile_seconds = compile_seconds if compile_seconds is not None else summary["compile_seconds"]
        jax_runs.append({"seed": seed, "value": summary["best_val_pearson"], "history": jax_run["history"],
                         "wall_seconds": jax_run["wall_seconds"]})
        if torch_run is not None:
            torch_runs.append({"seed": seed, "value": torch_run["best_val_pearson"], "history": torch_run["history"],
                               "wall_seconds": torch_run["wall_seconds"], "device": torch_run["device"]})
    return {**_pair(jax_runs, torch_runs, compile_seconds, torch_reason), "steps_per_epoch": steps}


def segmentation_case(size: dict, seeds: list[int], torch_device: str | None, torch_reason: str | None,
                      work: Path, say: Progress) -> dict:
    """The U-Net on the course images (resized to size x size in quick mode)."""
    from benchmarks.segmentation_vs_torch import one_seed
    from molml_jax.pipelines import segmentation as seg

    jax_runs, torch_runs, compile_seconds = [], [], None
    resize = (size["size"], size["size"]) if size["size"] else None
    for seed in seeds:
        say(f"segmentation: seed {seed}, {size['epochs']} epochs" + (f" at {size['size']}px" if resize else ""))
        jax_run, torch_run = one_seed(seg.Config(epochs=size["epochs"], seed=seed, resize=resize),
                                      torch_device=torch_device, run_torch=torch_device is not None)
        compile_seconds = compile_seconds if compile_seconds is not None else jax_run["compile_seconds"]
        jax_runs.append({**jax_run, "value": jax_run["test_dice"]})
        if torch_run is not None:
            torch_runs.append({**torch_run, "value": torch_run["test_dice"]})
    return _pair(jax_runs, torch_runs, compile_seconds, torch_reason)


def _pair(jax_runs, torch_runs, compile_seconds, torch_reason) -> dict:
    return {"jax": _framework(jax_runs, _jax_device(), compile_seconds=compile_seconds),
            "torch": _framework(torch_runs, torch_runs[0]["device"]) if torch_runs else {"not_run": torch_reason}}


def _jax_device() -> str:
    import jax

    return f"{jax.default_backend()} ({jax.devices()[0].device_kind})"


CASES = {"dna": dna_case, "tf_binding": tf_case, "segmentation": segmentation_case}

# The targets on an H100/H200-class GPU, checked from the course-sized runs. Epoch
# times include validation, so each check is stricter than its goal (train steps only).
GPU_GOALS = (
    ("dna", "500 BiLSTM epochs in <= 30 s", lambda c: 500 * c["jax"]["median_epoch_seconds"], "<=", 30.0, "s"),
    ("segmentation", "20 U-Net epochs in <= 3 s", lambda c: 20 * c["jax"]["median_epoch_seconds"], "<=", 3.0, "s"),
    ("tf_binding", "CNN <= 0.5 ms per step", lambda c: 1e3 * c["jax"]["median_epoch_seconds"] / c["steps_per_epoch"],
     "<=", 0.5, "ms"),
    ("segmentation", "U-Net JAX >= 2x PyTorch per epoch", lambda c: c.get("ratio_torch_over_jax"), ">=", 2.0, "x"),
)


def goals(cases: dict) -> list[dict]:
    """Each GPU goal whose pipeline ran: the measured value and whether it is met."""
    rows = []
    for name, what, measure, op, target, unit in GPU_GOALS:
        if name in cases and (value := measure(cases[name])) is not None:
            met = value <= target if op == "<=" else value >= target
            rows.append({"pipeline": name, "goal": what, "value": value, "unit": unit, "met": bool(met)})
    return rows


def run_suite(pipelines: list[str], *, quick: bool, seeds: int, out: Path, torch_device: str = "auto",
              epochs: int | None = None, progress: bool = True) -> dict:
    """Run the cases, write out/report.{md,json} and the figures; return the report."""
    import jax

    from benchmarks.seed_stats import compare
    from molml_jax.plots import plot_curve_comparison, plot_loss_bands

    say = Progress(progress)
    backend = jax.default_backend()
    torch_name, torch_reason = torch_plan(torch_device, backend)
    say(f"JAX on {_jax_device()}; PyTorch: {torch_name or 'not run: ' + torch_reason}")
    mode = "quick" if quick else "full"
    cases = {}
    with tempfile.TemporaryDirectory(prefix="suite_") as tmp:
        for name in pipelines:
            size = dict(SIZES[mode][name], **({"epochs": epochs} if epochs else {}))
            began = time.perf_counter()
            case = CASES[name](size, list(range(seeds)), torch_name, torch_reason, Path(tmp), say)
            j, t = case["jax"], case["torch"]
            case.update(pipeline=name, metric=METRICS[name], settings=size, seconds=time.perf_counter() - began)
            if "values" in t:
                case["ratio_torch_over_jax"] = t["median_epoch_seconds"] / j["median_epoch_seconds"]
                if seeds > 1:
                    case["comparison"] = compare(METRICS[name], j["values"], t["values"])
            curves = {"JAX": j["runs"][0]["history"], **({"PyTorch": t["runs"][0]["history"]} if "runs" in t else {})}
            plot_curve_comparison(curves, out / f"{name}_loss_curves.png",
                                  title=f"{name}, seed 0: {METRICS[name]} JAX {j['values'][0]:.3f}"
                                        + (f", PyTorch {t['values'][0]:.3f}" if "values" in t else ""))
            if seeds > 1:
                bands = {"JAX": [r["history"] for r in j["runs"]],
                         **({"PyTorch": [r["history"] for r in t["runs"]]} if "runs" in t else {})}
                plot_loss_bands(bands, out / f"{name}_bands.png", title=f"{name}: {seeds} seeds")
            say(f"{name}: done in {case['seconds']:.0f}s")
            cases[name] = case
    report = {"command": "python -m benchmarks.suite" + (" --quick" if quick else "")
                         + f" --pipelines {','.join(pipelines)} --seeds {seeds}"
                         + (f" --epochs {epochs}" if epochs else "") + f" --torch-device {torch_device}",
              "mode": mode, "seeds": seeds, "machine": machine_facts(), "cases": cases,
              "wall_seconds": time.perf_counter() - say.began}
    if backend == "gpu" and not quick:
        report["gpu_goals"] = goals(cases)
    write_report(out, "report", report, markdown)
    say(f"wrote {out / 'report.md'}")
    return report


def _cell(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [f"# molml-jax benchmark suite ({report['mode']}, {report['seeds']} seed(s))", "",
             f"`{report['command']}` ({report['wall_seconds']:.0f} s)", "",
             "| pipeline | metric | JAX | PyTorch | epoch s JAX | epoch s PyTorch | PyTorch / JAX | JAX compile s "
             "| device JAX | device PyTorch |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, c in report["cases"].items():
        j, t = c["jax"], c["torch"]
        ran = "values" in t
        cells = [name, c["metric"], _cell(j["values"]), _cell(t["values"]) if ran else "not run",
                 f"{j['median_epoch_seconds']:.3f}", f"{t['median_epoch_seconds']:.3f}" if ran else "-",
                 f"**{c['ratio_torch_over_jax']:.2f}x**" if ran else "-",
                 f"{j['compile_seconds']:.1f}" if j["compile_seconds"] is not None else "-",
                 j["device"], t["device"] if ran else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Values are mean ± sample sd over seeds where there are several. Epoch seconds: median of the "
              "epochs after each run's first (which includes compilation), training plus validation."]
    notes = [f"- {name}: {c['notes']}." for name, c in report["cases"].items() if c.get("notes")]
    notes += [f"- {name}: PyTorch not run: {c['torch']['not_run']}." for name, c in report["cases"].items()
              if "not_run" in c["torch"]]
    for name, c in report["cases"].items():
        if "comparison" in c:
            p = c["comparison"]["p_value"]
            notes.append(f"- {name}: two-sided Mann-Whitney U p-value (same distribution of {c['metric']}): {p:.3g}.")
        if c.get("left_plateau_fraction") and c["left_plateau_fraction"]["torch"] is not None:
            f = c["left_plateau_fraction"]
            notes.append(f"- {name}: runs that left the 0.693 plateau: JAX {100 * f['jax']:.0f}%, "
                         f"PyTorch {100 * f['torch']:.0f}%.")
    settings = "; ".join(f"{name} " + ", ".join(f"{k} {v}" for k, v in c["settings"].items() if v)
                         for name, c in report["cases"].items())
    if report.get("gpu_goals"):
        lines += ["", "## GPU goals (epoch times include validation: stricter than the goals)", "",
                  "| goal | measured | met |", "|---|---|---|"]
        lines += [f"| {g['goal']} | {g['value']:.2f} {g['unit']} | {'yes' if g['met'] else 'no'} |"
                  for g in report["gpu_goals"]]
    lines += ["", *notes, "", f"Settings: {settings}.", "", "## Machine", "", machine_line(m),
              f"{m['jax_devices']} JAX device(s); {m['platform']}.", ""]
    lines += [f"![{name}]({name}_loss_curves.png)" for name in report["cases"]]
    if report["seeds"] > 1:
        lines += [f"![{name} bands]({name}_bands.png)" for name in report["cases"]]
    return "\n".join(lines) + "\n"


def pipelines_arg(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in PIPELINES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown pipeline {', '.join(map(repr, unknown)) or repr(text)} "
                                         f"(choose from {', '.join(PIPELINES)})")
    return list(dict.fromkeys(names))


def main(argv: list[str] | None = None) -> None:
    from experiments._cli import Parser

    parser = Parser(prog="python -m benchmarks.suite", description=__doc__, allow_abbrev=False,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a few epochs on small data (about 2 min on 2 CPUs)")
    parser.add_argument("--pipelines", type=pipelines_arg, default=list(PIPELINES), metavar="NAMES",
                        help=f"comma-separated, from {', '.join(PIPELINES)} (default: all)")
    parser.add_argument("--seeds", type=positive_int, default=1, metavar="K", help="seeds 0..K-1 of each (default 1)")
    parser.add_argument("--epochs", type=positive_int, default=None, help="override every pipeline's epochs")
    parser.add_argument("--torch-device", choices=CHOICES, default="auto",
                        help="auto: the kind of device JAX runs on; cpu or cuda as asked")
    parser.add_argument("--out", type=Path, default=None,
                        help="results folder (default: benchmarks/results/suite_<backend>[_quick])")
    parser.add_argument("--no-progress", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)
    prepare_process(1)
    import jax

    from molml_jax.errors import exit_on_user_error

    out = args.out or RESULTS / f"suite_{jax.default_backend()}{'_quick' if args.quick else ''}"
    with exit_on_user_error():
        writable(out)
        torch_plan(args.torch_device, jax.default_backend())  # --torch-device cuda without CUDA fails here
        report = run_suite(args.pipelines, quick=args.quick, seeds=args.seeds, out=out,
                           torch_device=args.torch_device, epochs=args.epochs, progress=not args.no_progress)
    print(markdown(report))


if __name__ == "__main__":
    main()
