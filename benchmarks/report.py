"""What every side-by-side benchmark records and writes: the machine, and its results as
JSON, a markdown table and a loss-curve overlay in benchmarks/results/."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Callable


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_facts() -> dict:
    """Backend, devices, versions, CPU, XLA flags, and whose convolutions ran (oneDNN or XLA)."""
    import jax
    import torch

    from molml_jax.ops.native import conv_targets

    return {
        "backend": jax.default_backend(),
        "device_kind": jax.devices()[0].device_kind,
        "jax_devices": jax.local_device_count(),
        "jax_version": jax.__version__,
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpu": cpu_model(),
        "platform": platform.platform(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "cpu_convolutions": "oneDNN" if conv_targets() is not None else "XLA",
    }


def write_results(results_dir: Path, stem: str, result: dict, markdown: Callable[[dict], str],
                  histories: dict[str, list[dict]], curves_name: str, title: str) -> None:
    """results_dir/{stem}.json and {stem}.md, and the histories' loss curves in curves_name."""
    from molml_jax.plots import plot_curve_comparison
    from molml_jax.train.run_folder import write_json

    results_dir.mkdir(parents=True, exist_ok=True)
    write_json(results_dir / f"{stem}.json", result)
    (results_dir / f"{stem}.md").write_text(markdown(result))
    plot_curve_comparison(histories, results_dir / curves_name, title=title)


def machine_line(m: dict) -> str:
    """One markdown sentence from machine_facts() (older results files lack some of it)."""
    cpu = f" ({m['cpu']})" if m.get("cpu") else ""
    convolutions = f" ({m['cpu_convolutions']} convolutions on CPU)" if m.get("cpu_convolutions") else ""
    return (f"Machine: {m['backend']} ({m['device_kind']}), {m['cpu_count']} CPUs{cpu}; jax {m['jax_version']}"
            f"{convolutions}, torch {m['torch_version']}, Python {m['python']}.")
