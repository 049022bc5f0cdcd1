"""TF-binding profiles: a residual 1-D CNN predicting a motif score for every base of a
window (the TF-binding learning-rate study), and one-program learning-rate sweeps.

    from molml_jax.pipelines import tf_binding as tf
    summary = tf.train_and_evaluate(tf.TFBindingConfig(epochs=20, out="runs/tf"))
    table = tf.sweep(tf.TFBindingConfig(epochs=5, out="runs/tf_sweep"), lrs=[1e-2, 1e-3, 1e-4])
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from molml_jax.data.tf_binding import TFBindingData, read_tf_binding, simulate_tf_binding
from molml_jax.data import one_hot
from molml_jax.errors import InputError
from molml_jax.models.cnn import BindingPredictorCNN
from molml_jax.pipelines.common import check_resumable, config_record, run_facts
from molml_jax.plots import plot_loss_curves, plot_profiles
from molml_jax.train import (
    Checkpoints, Engine, FitConfig, Task, create_train_state, fit, mean_squared_error,
)
from molml_jax.train.run_folder import write_json

PIPELINE = "tf_binding"
# Measured (benchmarks/tf_binding_vs_torch.py, PITFALLS.md): convolutions inside lax.scan
# are several times slower on XLA:CPU, so the CNN runs a Python loop over the jitted step.
DRIVERS = {"cpu": "loop", "gpu": "scan", "cuda": "scan", "rocm": "scan"}


@dataclasses.dataclass
class TFBindingConfig:
    """Every setting of a TF-binding run; defaults are the study's. Saved as config.json."""

    sequences: str | None = None  # sequences TSV(.gz): window_name, sequence
    scores: str | None = None  # scores TSV(.gz): one column per window, one row per base
    simulate_windows: int = 5000  # used when no files are given
    simulate_length: int = 300
    simulate_seed: int = 0
    simulate_motifs: str = "CTCF"  # comma-separated JASPAR IDs or names of bundled motifs, or "all"
    epochs: int = 100
    batch_size: int = 64
    lr: float = 1e-2
    weight_decay: float = 1e-5
    num_channels: int = 32
    num_blocks: int = 3
    kernel_size: int = 3
    dropout_rate: float = 0.2
    val_fraction: float = 0.2
    early_stopping_patience: int | None = 10
    seed: int = 0
    devices: int = 1
    driver: str = "auto"
    checkpoint_every: int = 1
    out: str = "runs/tf_binding"

    def model_id(self) -> str:
        return (f"BindingPredictorCNN(channels={self.num_channels}, blocks={self.num_blocks}, "
                f"kernel={self.kernel_size})")


@dataclasses.dataclass
class TFData:
    """Windows and their split. x (N, L, 4) float32, y (N, L) float32; split 'train'/'val'."""

    source: str
    names: list[str]
    x: np.ndarray
    y: np.ndarray
    split: dict[str, np.ndarray]

    def arrays(self, part: str) -> dict[str, np.ndarray]:
        idx = self.split[part]
        return {"x": self.x[idx], "y": self.y[idx]}


def load_data(config: TFBindingConfig) -> TFData:
    """The study's two files, or (neither given) simulated windows; then a seeded split."""
    if (config.sequences is None) != (config.scores is None):
        raise InputError("give both --sequences and --scores, or neither (simulated data)")
    if config.sequences:
        data: TFBindingData = read_tf_binding(config.sequences, config.scores)
        names, x, y, source = data.names, data.x, data.y, " + ".join(data.source)
    else:
        names, sequences, y, _ = simulate_tf_binding(
            config.simulate_windows, config.simulate_length, seed=config.simulate_seed,
            motifs=motif_list(config.simulate_motifs))
        x, _ = one_hot(sequences, names=names, source="simulated windows")
        source = (f"simulated: {config.simulate_windows} windows of {config.simulate_length} bp, "
                  f"motifs {config.simulate_motifs}, seed {config.simulate_seed}")
    n = len(names)
    n_val = int(round(config.val_fraction * n))
    if n_val < 1 or n - n_val < 1:
        raise InputError(f"{source}: {n} windows are too few for a {config.val_fraction} validation split")
    perm = np.random.default_rng(config.seed).permutation(n)
    return TFData(source, list(names), x.astype(np.float32), y.astype(np.float32),
                  {"val": perm[:n_val], "train": perm[n_val:]})


def motif_list(text: str | None) -> list[str] | None:
    """'CTCF,SP1' -> ['CTCF', 'SP1']; 'all' or None -> None (every bundled motif)."""
    if text is None or text.strip().lower() == "all":
        return None
    return [part.strip() for part in text.split(",") if part.strip()]


def build_model(config: TFBindingConfig, length: int) -> BindingPredictorCNN:
    return BindingPredictorCNN(num_channels=config.num_channels, num_blocks=config.num_blocks,
                               kernel_size=config.kernel_size, dropout_rate=config.dropout_rate,
                               length=length)


def _moment_sums(pred, batch):
    """Per-window sums over bases of 1, p, t, p^2, t^2, p*t (pred, y: (B, L)): Pearson R over
    all bases of a split follows from their means."""
    p, t = pred, batch["y"]
    return {"bases": jnp.full(p.shape[:1], p.shape[1], p.dtype), "p": p.sum(-1), "t": t.sum(-1),
            "pp": (p * p).sum(-1), "tt": (t * t).sum(-1), "pt": (p * t).sum(-1)}


def pearson_from_moments(m: dict) -> dict:
    """{'pearson': R} over all bases from the means of _moment_sums (floats or (K,) arrays)."""
    e = {k: np.asarray(m[k], np.float64) / np.asarray(m["bases"], np.float64) for k in ("p", "t", "pp", "tt", "pt")}
    cov = e["pt"] - e["p"] * e["t"]
    var = (e["pp"] - e["p"] ** 2) * (e["tt"] - e["t"] ** 2)
    return {"pearson": np.where(var > 0, cov / np.sqrt(np.maximum(var, 1e-300)), 0.0)}


def make_task(model: BindingPredictorCNN) -> Task:
    return Task(
        model=model,
        loss=lambda pred, batch: mean_squared_error(pred, batch["y"]),
        metrics=_moment_sums,
        summarize=pearson_from_moments,
        train_kwargs={"example_ids": "_position"},  # per-example dropout: same on 1 or N devices
        drivers=DRIVERS,
    )


def make_optimizer(lr: float, weight_decay: float) -> optax.GradientTransformation:
    """AdamW as torch's (b1 0.9, b2 0.999, eps 1e-8, decoupled decay), rate as a state value."""
    return optax.inject_hyperparams(optax.adamw)(learning_rate=lr, weight_decay=weight_decay)


def _setup(config: TFBindingConfig, data: TFData, configs: int | None = None):
    model = build_model(config, data.x.shape[1])
    task = make_task(model)
    tx = make_optimizer(config.lr, config.weight_decay)
    engine = Engine(task, tx, batch_size=config.batch_size, devices=config.devices,
                    driver=config.driver, configs=configs)
    return model, task, tx, engine


def train_and_evaluate(config: TFBindingConfig, *, progress: bool = True) -> dict:
    """Train with early stopping (resuming if config.out holds a checkpoint), restore the
    best checkpoint, and write the run folder. Returns the summary (summary.json)."""
    run_dir = Path(config.out)
    data = load_data(config)  # bad input fails here, before anything is written
    check_resumable(run_dir, config, PIPELINE)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "config.json", {**config_record(config, PIPELINE), "data_source": data.source})

    model, task, tx, engine = _setup(config, data)
    state = create_train_state(model, tx, (data.x[:1],), config.seed)
    train, val = engine.put(data.arrays("train")), engine.put(data.arrays("val"))
    fit_config = FitConfig(epochs=config.epochs, early_stopping_patience=config.early_stopping_patience,
                           checkpoint_every=config.checkpoint_every, progress=progress)
    result = fit(engine, state, train, val, fit_config, run_dir, model_id=config.model_id())

    best, _ = Checkpoints(run_dir / "checkpoints").restore("best", result.state, expect_model=config.model_id())
    metrics, predictions = engine.evaluate(engine.replicate(best), val, return_outputs=True)
    summary = {
        "best_val_loss": metrics["loss"],
        "best_val_pearson": metrics["pearson"],
        "last_val_loss": result.history[-1]["val_loss"] if result.history else None,
        "last_val_pearson": result.history[-1]["val_pearson"] if result.history else None,
        **run_facts(result, engine),
        "n_train": int(len(data.split["train"])),
        "n_val": int(len(data.split["val"])),
        "data": data.source,
    }
    write_json(run_dir / "summary.json", summary)
    plot_loss_curves(result.history, run_dir / "loss_curve.png",
                     title=f"TF-binding CNN, lr {config.lr:g}: best validation R {metrics['pearson']:.3f}")
    val_idx = data.split["val"]
    plot_profiles(data.y[val_idx[:4]], predictions[:4], [data.names[i] for i in val_idx[:4]],
                  run_dir / "profile_examples.png")
    return summary


# ----- learning-rate sweeps ---------------------------------------------------------------

def resolve_parallel(parallel: str) -> str:
    """'auto': sequential on CPU (measured slower vmapped there: the native convolutions run
    the configurations one by one, XLA's become grouped convolutions; PITFALLS.md,
    benchmarks/tf_binding_vs_torch.py --sweep), vmap on accelerators."""
    if parallel == "auto":
        return "sequential" if jax.default_backend() == "cpu" else "vmap"
    if parallel not in ("vmap", "sequential"):
        raise ValueError(f"--parallel must be auto, vmap or sequential, not {parallel!r}")
    return parallel


def _sweep_states(config, model, tx, sample, runs):
    from molml_jax.train.state import with_learning_rate

    return [with_learning_rate(create_train_state(model, tx, sample, config.seed + s), lr) for lr, s in runs]


def _train_configurations(engine, states, train, val, epochs, patience, order_rng, progress, label):
    """Train K states (stacked if engine.configs) with per-configuration early stopping.

    Returns one history (list of rows) per configuration and the wall seconds.
    """
    import time

    from tqdm.auto import tqdm

    k = len(states)
    stacked = engine.configs is not None
    replicated = engine.replicate(engine.stack(states) if stacked else states[0])
    histories = [[] for _ in range(k)]
    best = np.full(k, np.inf)
    bad = np.zeros(k, int)
    active = np.ones(k, bool)
    began = time.perf_counter()
    bar = tqdm(total=epochs, desc=label, unit="epoch", disable=not progress, dynamic_ncols=True)
    for epoch in range(1, epochs + 1):
        if not active.any():
            break
        t0 = time.perf_counter()
        replicated, train_m = engine.train_epoch(replicated, train, epoch, order_rng=order_rng,
                                                 active=active if stacked else None)
        val_m = engine.evaluate(replicated, val)
        seconds = time.perf_counter() - t0
        for j in np.flatnonzero(active):
            pick = (lambda v: float(np.asarray(v)[j])) if stacked else float
            row = {"epoch": epoch, "train_loss": pick(train_m["loss"]), "val_loss": pick(val_m["loss"]),
                   "val_pearson": pick(val_m["pearson"]), "epoch_seconds": seconds}
            histories[j].append(row)
            if not np.isfinite(row["train_loss"]):
                active[j] = False  # diverged: this configuration stops, the others go on
                continue
            if row["val_loss"] < best[j]:
                best[j], bad[j] = row["val_loss"], 0
            else:
                bad[j] += 1
            if patience is not None and bad[j] >= patience:
                active[j] = False
        bar.update(1)
    bar.close()
    return histories, time.perf_counter() - began


def sweep(config: TFBindingConfig, lrs, *, seeds: int = 1, parallel: str = "auto",
          progress: bool = True, wandb: bool = False) -> dict:
    """Train every (learning rate, seed) configuration for config.epochs with early
    stopping, on the same data, split and batches, and write sweep.csv, sweep.md,
    sweep.json and sweep_curves.png to config.out.

    parallel: 'vmap' (all configurations in one compiled program, the state vmapped over
    them), 'sequential' (one after another, the same results), or 'auto'.
    Returns {'rows': per-configuration results, 'table': per-rate mean and spread, ...}.
    """
    from molml_jax.train.state import seed_keys

    lrs = [float(lr) for lr in lrs]
    if not lrs or any(not lr > 0 for lr in lrs):
        raise InputError(f"learning rates must be positive: {lrs}")
    if seeds < 1:
        raise InputError(f"--seeds must be at least 1, not {seeds}")
    mode = resolve_parallel(parallel)
    if wandb:
        _wandb_module()  # fails before training, not after it
    data = load_data(config)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = [(lr, s) for lr in lrs for s in range(seeds)]
    order_rng = np.asarray(jax.random.key_data(seed_keys(config.seed)[1]))  # the same batches for all
    sample = (data.x[:1],)
    if mode == "vmap":
        model, task, tx, engine = _setup(config, data, configs=len(runs))
        train, val = engine.put(data.arrays("train")), engine.put(data.arrays("val"))
        histories, wall = _train_configurations(
            engine, _sweep_states(config, model, tx, sample, runs), train, val, config.epochs,
            config.early_stopping_patience, order_rng, progress, f"sweep x{len(runs)} (vmap)")
    else:
        model, task, tx, engine = _setup(config, data)
        train, val = engine.put(data.arrays("train")), engine.put(data.arrays("val"))
        histories, wall = [], 0.0
        for state, (lr, s) in zip(_sweep_states(config, model, tx, sample, runs), runs):
            (history,), seconds = _train_configurations(
                engine, [state], train, val, config.epochs, config.early_stopping_patience,
                order_rng, progress, f"lr {lr:g} seed {config.seed + s}")
            histories.append(history)
            wall += seconds
    rows = []
    for (lr, s), history in zip(runs, histories):
        finite = [r for r in history if np.isfinite(r["val_loss"])]
        best_row = min(finite, key=lambda r: r["val_loss"]) if finite else history[-1]
        rows.append({"lr": lr, "seed": config.seed + s, "best_val_loss": best_row["val_loss"],
                     "best_val_pearson": best_row["val_pearson"], "best_epoch": best_row["epoch"],
                     "epochs_run": len(history)})
    result = {"parallel": mode, "wall_seconds": wall, "backend": jax.default_backend(),
              "epochs": config.epochs, "rows": rows, "table": _per_rate(rows), "histories": histories,
              "data": data.source, "config": config_record(config, PIPELINE)}
    _write_sweep(out, result, runs)
    if wandb:
        _log_wandb(out, config, runs, histories, rows)
    return result


def _per_rate(rows: list[dict]) -> list[dict]:
    table = []
    for lr in dict.fromkeys(r["lr"] for r in rows):
        group = [r for r in rows if r["lr"] == lr]
        entry = {"lr": lr, "seeds": len(group)}
        for key in ("best_val_loss", "best_val_pearson", "best_epoch", "epochs_run"):
            values = np.array([r[key] for r in group], np.float64)
            entry[key] = float(values.mean())
            entry[f"{key}_sd"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        table.append(entry)
    return table


def _write_sweep(out: Path, result: dict, runs) -> None:
    import pandas as pd

    from molml_jax.plots import plot_sweep_curves

    pd.DataFrame(result["rows"]).to_csv(out / "sweep.csv", index=False)
    write_json(out / "sweep.json", result)
    seeds = result["table"][0]["seeds"]
    spread = seeds > 1
    head = "| learning rate | validation loss | validation Pearson R | best epoch | epochs run |"
    lines = [f"# Learning-rate sweep ({result['epochs']} epochs, {seeds} seed(s) per rate, "
             f"{result['parallel']}, {result['wall_seconds']:.1f} s)", "", f"Data: {result['data']}", "",
             head, "|---|---|---|---|---|"]
    for e in result["table"]:
        fmt = (lambda k, d: f"{e[k]:.{d}f} ± {e[k + '_sd']:.{d}f}") if spread else (lambda k, d: f"{e[k]:.{d}f}")
        lines.append(f"| {e['lr']:g} | {fmt('best_val_loss', 4)} | {fmt('best_val_pearson', 4)} | "
                     f"{fmt('best_epoch', 1)} | {fmt('epochs_run', 1)} |")
    if spread:
        lines += ["", "Mean ± standard deviation over seeds; each value is the epoch of lowest validation loss."]
    (out / "sweep.md").write_text("\n".join(lines) + "\n")
    labels = [f"lr {lr:g}" + (f" seed {s}" if spread else "") for lr, s in runs]
    plot_sweep_curves(dict(zip(labels, result["histories"])), out / "sweep_curves.png")


def _wandb_module():
    try:
        import wandb
    except ImportError:
        raise InputError("--wandb needs the wandb package: pip install 'molml-jax[tracking]'") from None
    return wandb


def _log_wandb(out: Path, config, runs, histories, rows) -> None:
    """One wandb run per configuration (offline unless WANDB_MODE says otherwise)."""
    import os

    wandb = _wandb_module()
    for (lr, s), history, row in zip(runs, histories, rows):
        run = wandb.init(project="molml-jax-tf-binding", dir=str(out), reinit=True,
                         mode=os.environ.get("WANDB_MODE", "offline"),
                         name=f"lr{lr:g}-seed{config.seed + s}",
                         config={**config_record(config, PIPELINE), "lr": lr, "seed": config.seed + s})
        for r in history:
            run.log({k: v for k, v in r.items() if k != "epoch"}, step=r["epoch"])
        run.summary.update(row)
        run.finish()
