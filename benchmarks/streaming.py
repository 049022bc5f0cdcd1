"""Streaming: peak memory and epoch time of the TF-binding pipeline trained from a prepared
dataset, streamed (`--stream`) and kept on the devices (`--no-stream`), at two sizes.

    python -m benchmarks.streaming                               # 20,000 and 200,000 windows
    python -m benchmarks.streaming --sizes 2000,20000 --epochs 2 --out /tmp/streaming

For each size it simulates the windows once and writes them as a prepared dataset
(`experiments.tf_binding prepare`), then runs `experiments.tf_binding train --data DIR`
in a fresh process per mode and reads that process's peak resident memory from the kernel
(wait4's ru_maxrss: the whole process, JAX and the data) and the epoch times from its
history.csv (epochs after the first, which compiles; validation included). The process
also evaluates the best and last states and draws the run's figures, as every run does.

Targets (issue "Data beyond device memory"): streamed peak memory at 200,000 windows within
1.5x of that at 20,000; streamed epoch time >= 0.8x the speed of the in-memory one at 20,000.
Writes benchmarks/results/streaming.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.report import machine_facts, machine_line, read_history, writable, write_report
from experiments._cli import positive_int

RESULTS = Path(__file__).resolve().parent / "results"
MEMORY_GOAL = 1.5   # streamed peak RSS, largest / smallest size
SPEED_GOAL = 0.8    # in-memory / streamed epoch seconds at the smallest size


def sizes(text: str) -> list[int]:
    values = sorted({positive_int(part) for part in text.split(",") if part.strip()})
    if len(values) < 2:
        raise argparse.ArgumentTypeError(f"give at least two sizes, e.g. 20000,200000: {text!r}")
    return values


def run_measured(argv: list[str]) -> tuple[int, float, str]:
    """(peak RSS bytes, wall seconds, stderr tail) of `python ARGV` in a fresh process."""
    began = time.perf_counter()
    process = subprocess.Popen([sys.executable, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    stderr = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise SystemExit(f"error: {' '.join(argv[:4])} ... failed ({process.returncode}): {stderr.strip()[-800:]}")
    return usage.ru_maxrss * 1024, time.perf_counter() - began, stderr  # ru_maxrss is in KiB on Linux


def prepare(work: Path, windows: int, length: int) -> Path:
    folder = work / f"tf_{windows}"
    if not folder.exists():
        _, seconds, _ = run_measured(["-m", "experiments.tf_binding", "prepare", "--out", str(folder),
                                      "--simulate-windows", str(windows), "--simulate-length", str(length)])
        print(f"prepared {windows} windows in {seconds:.0f} s: {folder}", file=sys.stderr)
    return folder


def measure(data: Path, stream: bool, epochs: int, out: Path) -> dict:
    run = out / ("stream" if stream else "in_memory")
    rss, wall, stderr = run_measured([
        "-m", "experiments.tf_binding", "train", "--data", str(data), "--stream" if stream else "--no-stream",
        "--epochs", str(epochs), "--early-stopping-patience", "none", "--out", str(run)])
    history = read_history(run / "history.csv")
    times = [row["epoch_seconds"] for row in history[1:]] or [history[0]["epoch_seconds"]]
    summary = json.loads((run / "summary.json").read_text())
    return {"stream": stream, "peak_rss_bytes": rss, "wall_seconds": wall, "epoch_seconds": times,
            "median_epoch_seconds": sorted(times)[len(times) // 2], "val_loss": history[-1]["val_loss"],
            "placement": next((line for line in stderr.splitlines() if line.startswith("data: ")), None),
            "streamed": summary["streamed"]}


def markdown(result: dict) -> str:
    gib = lambda b: f"{b / 2**30:.2f}"
    lines = [f"# Streaming: TF-binding CNN from a prepared dataset ({result['epochs']} epochs, "
             f"{result['length']} bp windows)", "",
             "| windows | mode | peak RSS GiB | epoch s (after the first) | last val loss |", "|---|---|---|---|---|"]
    for size in result["sizes"]:
        for row in result["runs"][str(size)]:
            lines.append(f"| {size:,} | {'streamed' if row['stream'] else 'in memory'} | {gib(row['peak_rss_bytes'])} "
                         f"| {row['median_epoch_seconds']:.2f} | {row['val_loss']:.5f} |")
    memory, speed = result["streamed_memory_ratio"], result["streamed_speed_ratio"]
    lines += ["", f"- Streamed peak memory, {result['sizes'][-1]:,} / {result['sizes'][0]:,} windows: "
              f"**{memory:.2f}x** (goal <= {MEMORY_GOAL}x).",
              f"- Streamed speed at {result['sizes'][0]:,} windows (in-memory epoch seconds / streamed): "
              f"**{speed:.2f}x** (goal >= {SPEED_GOAL}x).",
              "- Same batches either way: the last validation losses of the two modes agree at each size.",
              "", "Peak RSS is the whole training process (wait4 ru_maxrss), including the final "
              "evaluation and figures; epoch seconds include validation.", "", machine_line(result["machine"])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.streaming", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=sizes, default=[20_000, 200_000], help="windows per dataset (default: 20000,200000)")
    parser.add_argument("--length", type=positive_int, default=300, help="bases per window (default: 300)")
    parser.add_argument("--epochs", type=positive_int, default=2, help="epochs per run (default: 2)")
    parser.add_argument("--work", type=Path, default=None, help="where the prepared datasets go (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder (default: benchmarks/results)")
    args = parser.parse_args(argv)
    out = writable(args.out)
    work = args.work or Path(tempfile.mkdtemp(prefix="molml_streaming_"))
    runs = {}
    for size in args.sizes:
        data = prepare(work, size, args.length)
        runs[str(size)] = [measure(data, stream, args.epochs, work / f"runs_{size}") for stream in (True, False)]
        print(f"{size}: " + ", ".join(f"{'stream' if r['stream'] else 'memory'} {r['peak_rss_bytes'] / 2**30:.2f} GiB "
                                      f"{r['median_epoch_seconds']:.2f} s/epoch" for r in runs[str(size)]), file=sys.stderr)
    small, large = runs[str(args.sizes[0])], runs[str(args.sizes[-1])]
    result = {"sizes": args.sizes, "length": args.length, "epochs": args.epochs, "runs": runs,
              "streamed_memory_ratio": large[0]["peak_rss_bytes"] / small[0]["peak_rss_bytes"],
              "streamed_speed_ratio": small[1]["median_epoch_seconds"] / small[0]["median_epoch_seconds"],
              "machine": machine_facts()}
    print(write_report(out, "streaming", result, markdown))


if __name__ == "__main__":
    main()
