"""What every pipeline's run folder shares: the stored config, resume checks, run facts."""

from __future__ import annotations

import dataclasses
import platform
from pathlib import Path

import jax

from molml_jax.errors import InputError
from molml_jax.train.engine import Engine
from molml_jax.train.fit import FitResult
from molml_jax.train.run_folder import read_run_config

# path-valued settings recorded as absolute paths (None: the pipeline's bundled default)
PATH_FIELDS = ("data", "sequences", "scores")
# settings a resumed run may change (every other setting must match the stored run)
RESUMABLE = ("epochs", "devices", "driver", "checkpoint_every", "out", "early_stopping_patience")


def config_record(config, pipeline: str) -> dict:
    """config.json: every setting, paths made absolute, and the pipeline's name."""
    record = dataclasses.asdict(config)
    for key in PATH_FIELDS:
        if key in record:
            record[key] = str(Path(record[key]).resolve()) if record[key] else None
    record["pipeline"] = pipeline
    return record


def check_resumable(run_dir: Path, config, pipeline: str) -> None:
    """Refuse a run folder that holds a run with other settings (those in RESUMABLE may change)."""
    if not (run_dir / "config.json").is_file():
        if (run_dir / "checkpoints").exists():
            raise InputError(f"{run_dir}: has checkpoints but no config.json; use another --out")
        return
    stored = read_run_config(run_dir, pipeline)
    new = config_record(config, pipeline)
    changed = [k for k in new if k not in RESUMABLE and stored.get(k) != new[k]]
    if changed:
        diffs = ", ".join(f"{k}={stored.get(k)!r} (now {new[k]!r})" for k in changed)
        raise InputError(f"{run_dir}: holds a run with other settings: {diffs}; use another --out")


def stored_config(run_dir: Path, pipeline: str, config_class):
    """The config a run folder was trained with."""
    stored = read_run_config(run_dir, pipeline)
    fields = {f.name for f in dataclasses.fields(config_class)}
    return config_class(**{k: v for k, v in stored.items() if k in fields})


def run_facts(result: FitResult, engine: Engine) -> dict:
    """summary.json fields every pipeline reports: progress, timing, where it ran."""
    return {
        "best_epoch": result.best_epoch,
        "best_val_loss": result.best_val_loss,
        "epochs_run": result.epochs_run,
        "stopped_early": result.stopped_early,
        "resumed_from_epoch": result.resumed_from,
        "compile_seconds": result.compile_seconds,
        "median_epoch_seconds": result.median_epoch_seconds,
        "devices": engine.n_devices,
        "driver": engine.driver,
        "backend": jax.default_backend(),
        "device_kind": jax.devices()[0].device_kind,
        "jax_version": jax.__version__,
        "python": platform.python_version(),
    }
