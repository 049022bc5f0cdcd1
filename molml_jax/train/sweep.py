"""Sweeps: K (learning rate, seed) configurations of one task trained on the same data,
split and batches, either as ONE compiled program (the train state stacked over
configurations and the step vmapped: `parallel='vmap'`) or one after another
(`'sequential'`), with the same results. Each configuration stops early, follows its own
plateau schedule and stops alone when it diverges (the shared loop in `epochs.py`).

Writes sweep.csv (one row per configuration), sweep.md (per rate: mean ± sd over seeds),
sweep.json (everything, with each configuration's history) and sweep_curves.png.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

import jax
import numpy as np

from molml_jax.errors import InputError
from molml_jax.progress import progress_bar
from molml_jax.train.engine import Engine
from molml_jax.train.epochs import LoopConfig, Tracker, run_epochs
from molml_jax.train.run_folder import write_json
from molml_jax.train.state import TrainState, with_learning_rate

PARALLEL = ("auto", "vmap", "sequential")


@dataclasses.dataclass(frozen=True)
class Configuration:
    lr: float
    seed: int

    @property
    def label(self) -> str:
        return f"lr {self.lr:g} seed {self.seed}"


def configurations(lrs: Sequence[float], seeds: int, first_seed: int) -> list[Configuration]:
    """Every (rate, seed) pair, rates outer: seeds first_seed .. first_seed + seeds - 1."""
    lrs = [float(lr) for lr in lrs]
    if not lrs or any(not lr > 0 for lr in lrs):
        raise InputError(f"learning rates must be a non-empty list of positive numbers, not {lrs}")
    if seeds < 1:
        raise InputError(f"--seeds must be at least 1, not {seeds}")
    return [Configuration(lr, first_seed + s) for lr in lrs for s in range(seeds)]


def resolve_parallel(parallel: str, measured: Mapping[str, str]) -> str:
    """'auto': the faster of vmap and sequential for this backend (`measured`, per task);
    sequential where nothing was measured."""
    if parallel not in PARALLEL:
        raise InputError(f"--parallel must be one of {', '.join(PARALLEL)}, not {parallel!r}")
    return measured.get(jax.default_backend(), "sequential") if parallel == "auto" else parallel


@dataclasses.dataclass
class SweepRun:
    histories: list[list[dict]]  # per configuration, one row per epoch it trained
    wall_seconds: float
    parallel: str
    # the states after the last epoch, still on the devices of `engine` (which trained them):
    # one stacked over the K configurations when vmapped, else one per configuration
    finals: list[TrainState]
    engine: Engine


def train_configurations(make_engine: Callable[[int | None], Engine], init_state: Callable[[int], TrainState],
                         runs: Sequence[Configuration], train: Mapping[str, np.ndarray],
                         val: Mapping[str, np.ndarray], config: LoopConfig, *, parallel: str, order_rng,
                         progress: bool = True) -> SweepRun:
    """Train every configuration from init_state(seed) at its rate.

    make_engine(K) builds the engine (K configurations stacked, or None for one);
    order_rng (raw key data) orders the batches of every configuration alike.
    """
    states = [with_learning_rate(init_state(run.seed), run.lr) for run in runs]
    began = time.perf_counter()
    if parallel == "vmap":
        engine = make_engine(len(runs))
        histories, last = _train(engine, engine.stack(states), [r.lr for r in runs], engine.put(train),
                                 engine.put(val), config, order_rng, progress, f"sweep x{len(runs)} (vmap)")
        finals = [last]
    else:
        engine = make_engine(None)
        train_d, val_d = engine.put(train), engine.put(val)
        histories, finals = [], []
        for run, state in zip(runs, states):
            history, last = _train(engine, state, [run.lr], train_d, val_d, config, order_rng, progress, run.label)
            histories += history
            finals.append(last)
    return SweepRun(histories, time.perf_counter() - began, parallel, finals, engine)


def _train(engine, host_state, lrs, train, val, config, order_rng, progress, label):
    """(per-run histories, the replicated state after the last epoch: stacked when engine.configs)."""
    tracker = Tracker.start(lrs, config.plateau)
    histories: list[list[dict]] = [[] for _ in lrs]
    state = engine.replicate(host_state)
    with progress_bar(total=config.epochs, desc=label, unit="epoch", disable=not progress, dynamic_ncols=True) as bar:
        for result in run_epochs(engine, state, train, val, config, tracker, order_rng=order_rng):
            for history, row in zip(histories, result.rows):
                if row is not None:
                    history.append(row)
            state = result.state
            bar.update(1)
    return histories, state


def summarize(runs: Sequence[Configuration], histories: Sequence[list[dict]],
              last: Sequence[dict] | None = None) -> tuple[list[dict], list[dict]]:
    """(rows, table): each configuration's best epoch (lowest finite validation loss) with
    its validation metrics, plus its `last` entries (e.g. last_test_auc of its final state),
    and per rate the mean and sample sd of those over seeds."""
    rows = []
    for i, (run, history) in enumerate(zip(runs, histories)):
        finite = [r for r in history if np.isfinite(r["val_loss"])]
        best = min(finite, key=lambda r: r["val_loss"]) if finite else history[-1]
        row = {"lr": run.lr, "seed": run.seed}
        row.update({f"best_{k}": v for k, v in best.items() if k.startswith("val_")})
        row.update(best_epoch=best["epoch"], epochs_run=len(history))
        row.update(last[i] if last is not None else {})
        rows.append(row)
    table = []
    for lr in dict.fromkeys(r["lr"] for r in rows):
        group = [r for r in rows if r["lr"] == lr]
        entry = {"lr": lr, "seeds": len(group)}
        for key in [k for k in group[0] if k.startswith(("best_", "last_")) or k == "epochs_run"]:
            values = np.array([r[key] for r in group], np.float64)
            entry[key] = float(values.mean())
            entry[f"{key}_sd"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        table.append(entry)
    return rows, table


def write_sweep(out: Path, result: dict, runs: Sequence[Configuration], title: str) -> None:
    """sweep.csv, sweep.json, sweep.md and sweep_curves.png into `out`."""
    import pandas as pd

    from molml_jax.plots import plot_sweep_curves

    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(result["rows"]).to_csv(out / "sweep.csv", index=False)
    write_json(out / "sweep.json", result)
    seeds = result["table"][0]["seeds"]
    spread = seeds > 1
    metrics = [k for k in result["table"][0] if k.startswith(("best_val_", "last_test_")) and not k.endswith("_sd")]
    named = lambda k: (("validation " + k[len("best_val_"):]) if k.startswith("best_val_")
                       else "last-epoch test " + k[len("last_test_"):]).replace("_", " ")
    head = ["learning rate"] + [named(k) for k in metrics]
    head += ["best epoch", "epochs run"]
    lines = [f"# {title} ({result['epochs']} epochs, {seeds} seed(s) per rate, {result['parallel']}, "
             f"{result['wall_seconds']:.1f} s)", "", f"Data: {result['data']}", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in result["table"]:
        fmt = (lambda k, d: f"{e[k]:.{d}f} ± {e[k + '_sd']:.{d}f}") if spread else (lambda k, d: f"{e[k]:.{d}f}")
        cells = [f"{e['lr']:g}"] + [fmt(k, 4) for k in metrics] + [fmt("best_epoch", 1), fmt("epochs_run", 1)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Validation values are taken at the configuration's epoch of lowest validation loss, "
              "test values (where the data has a test split) from its state after its last epoch"
              + ("; mean ± sample standard deviation over seeds." if spread else ".")]
    (out / "sweep.md").write_text("\n".join(lines) + "\n")
    labels = [run.label if spread else f"lr {run.lr:g}" for run in runs]
    plot_sweep_curves(dict(zip(labels, result["histories"])), out / "sweep_curves.png")


def wandb_module():
    try:
        import wandb
    except ImportError:
        raise InputError("--wandb needs the wandb package: pip install 'molml-jax[tracking]'") from None
    return wandb


def log_wandb(out: Path, project: str, config_record: dict, runs, histories, rows) -> None:
    """One wandb run per configuration (offline unless WANDB_MODE says otherwise)."""
    wandb = wandb_module()
    for run, history, row in zip(runs, histories, rows):
        logged = wandb.init(project=project, dir=str(out), reinit=True, mode=os.environ.get("WANDB_MODE", "offline"),
                            name=f"lr{run.lr:g}-seed{run.seed}", config={**config_record, "lr": run.lr, "seed": run.seed})
        for r in history:
            logged.log({k: v for k, v in r.items() if k != "epoch"}, step=r["epoch"])
        logged.summary.update(row)
        logged.finish()
