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
    """Backend, devices (name, memory), versions (jax, jaxlib, torch, CUDA, cuDNN, driver),
    CPU, XLA flags, and whose convolutions ran on the CPU (oneDNN or XLA)."""
    import jax
    import jaxlib

    from molml_jax.ops.native import conv_targets

    device = jax.devices()[0]
    facts = {
        "backend": jax.default_backend(),
        "device_kind": device.device_kind,
        "jax_devices": jax.local_device_count(),
        "device_memory_gib": _device_memory_gib(device),
        "jax_version": jax.__version__,
        "jaxlib_version": jaxlib.__version__,
        "torch_version": None,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpu": cpu_model(),
        "platform": platform.platform(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "cpu_convolutions": "oneDNN" if conv_targets() is not None else "XLA",
    }
    try:
        import torch
    except ImportError:
        return facts
    facts["torch_version"] = torch.__version__
    if torch.cuda.is_available():
        facts.update(torch_cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                     torch_device=torch.cuda.get_device_name(0))
    facts.update(_nvidia_smi())
    return facts


def _device_memory_gib(device) -> float | None:
    """The accelerator's memory as XLA reports it (None on the CPU, where it has no limit)."""
    try:
        limit = (device.memory_stats() or {}).get("bytes_limit")
    except Exception:  # backends without memory_stats
        return None
    return round(limit / 2**30, 1) if limit else None


def _nvidia_smi() -> dict:
    """{'gpu_driver', 'gpu_name', 'gpu_memory'} from nvidia-smi where there is one."""
    import shutil
    import subprocess

    if shutil.which("nvidia-smi") is None:
        return {}
    try:
        line = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,name,memory.total",
                               "--format=csv,noheader"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    fields = [f.strip() for f in line.splitlines()[0].split(",")] if line.strip() else []
    return dict(zip(("gpu_driver", "gpu_name", "gpu_memory"), fields)) if len(fields) == 3 else {}


def writable(folder: Path) -> Path:
    """The results folder, created; InputError naming it when it can't be written."""
    from molml_jax.errors import InputError

    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise InputError(f"{folder}: cannot write results there ({err.strerror or err})") from None
    return folder


def read_history(path: Path) -> list[dict]:
    """A run folder's history.csv as a list of rows (epoch int, the rest float)."""
    import csv

    with open(path, newline="") as handle:
        return [{k: (int(v) if k == "epoch" else float(v)) for k, v in row.items()} for row in csv.DictReader(handle)]


def epoch_seconds_after_first(history: list[dict]) -> list[float]:
    """Epoch times without the first epoch (which includes compilation), or the first alone."""
    return [row["epoch_seconds"] for row in history[1:]] or [history[0]["epoch_seconds"]]


def write_report(results_dir: Path, stem: str, result: dict, markdown: Callable[[dict], str]) -> str:
    """results_dir/{stem}.json (every number) and {stem}.md (the table); returns the markdown."""
    from molml_jax.train.run_folder import write_json

    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    write_json(results_dir / f"{stem}.json", result)
    text = markdown(result)
    (results_dir / f"{stem}.md").write_text(text)
    return text


def write_results(results_dir: Path, stem: str, result: dict, markdown: Callable[[dict], str],
                  histories: dict[str, list[dict]], curves_name: str, title: str) -> None:
    """write_report, and the histories' loss curves in curves_name."""
    from molml_jax.plots import plot_curve_comparison

    write_report(results_dir, stem, result, markdown)
    plot_curve_comparison(histories, results_dir / curves_name, title=title)


def machine_line(m: dict) -> str:
    """One markdown sentence from machine_facts() (older results files lack some of it)."""
    cpu = f" ({m['cpu']})" if m.get("cpu") else ""
    convolutions = f" ({m['cpu_convolutions']} convolutions on CPU)" if m.get("cpu_convolutions") else ""
    memory = f", {m['device_memory_gib']} GiB" if m.get("device_memory_gib") else ""
    cuda = "".join(f", {name} {m[key]}" for key, name in (("torch_cuda", "CUDA"), ("cudnn", "cuDNN"),
                                                          ("gpu_driver", "driver")) if m.get(key))
    jaxlib = f" (jaxlib {m['jaxlib_version']})" if m.get("jaxlib_version") else ""
    torch = f"torch {m['torch_version']}" if m.get("torch_version") else "no torch"
    return (f"Machine: {m['backend']} ({m['device_kind']}{memory}), {m['cpu_count']} CPUs{cpu}; "
            f"jax {m['jax_version']}{jaxlib}{convolutions}, {torch}{cuda}, Python {m['python']}.")
