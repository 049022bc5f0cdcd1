"""The files every run folder holds: config.json, history.csv, summary.json (+ figures,
checkpoints/). Writes are atomic (temp file + rename) so an interrupted run never leaves
half a file."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable

from molml_jax.errors import InputError


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def write_json(path: Path, obj: dict) -> None:
    _atomic_write(Path(path), json.dumps(_jsonable(obj), indent=2) + "\n")


def write_history(path: Path, rows: Iterable[dict]) -> None:
    """history.csv: one row per epoch, columns in first-seen order."""
    rows = list(rows)
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    _atomic_write(Path(path), buffer.getvalue())


def read_run_config(run_dir: str | Path, pipeline: str) -> dict:
    """config.json of a finished or running run of `pipeline`, with clear errors."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputError(f"{run_dir}: no such run folder")
    if not (run_dir / "config.json").is_file():
        raise InputError(f"{run_dir}: not a run folder (no config.json)")
    return read_config_file(run_dir / "config.json", pipeline, where=run_dir)


def read_config_file(path: str | Path, pipeline: str, *, where: str | Path | None = None) -> dict:
    """A stored config.json of a `pipeline` run (InputError if missing, unreadable or of
    another pipeline; `where` names the run folder in that message)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such config file (give RUN/config.json or a run folder)")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(config, dict) or config.get("pipeline") != pipeline:
        found = config.get("pipeline", "unknown") if isinstance(config, dict) else "unknown"
        raise InputError(f"{where or path}: is a {found} run, not a {pipeline} run")
    return config
