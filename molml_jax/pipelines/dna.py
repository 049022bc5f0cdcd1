"""DNA binding sites: bidirectional-LSTM classifier (course problem set 2, part 1).

    from molml_jax.pipelines import dna
    summary = dna.train_and_evaluate(dna.DNAConfig(epochs=50, out="runs/dna"))
    dna.predict("runs/dna", "my_sequences.fasta", "probabilities.csv")
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import numpy as np
import optax
import pandas as pd
from sklearn.metrics import roc_auc_score

from molml_jax.data import default_dna_csv, one_hot, read_sequences, split_indices
from molml_jax.errors import InputError
from molml_jax.models import BiLSTMClassifier
from molml_jax.plots import plot_loss_curves
from molml_jax.train import (
    Checkpoints, Engine, FitConfig, PlateauConfig, Task, binary_cross_entropy_with_logits,
    create_train_state, fit,
)
from molml_jax.pipelines.common import check_resumable, config_record, run_facts, stored_config
from molml_jax.train.run_folder import write_json

PIPELINE = "dna"
# Measured by benchmarks/dna_drivers.py: the scanned epoch is the faster driver for the
# BiLSTM on XLA:CPU; on GPU both are tried by the benchmark (scan is the usual win).
DRIVERS = {"cpu": "scan", "gpu": "scan", "cuda": "scan", "rocm": "scan"}


@dataclasses.dataclass
class DNAConfig:
    """Every setting of a DNA run; the defaults are the course's. Saved as config.json."""

    data: str | None = None  # CSV/TSV with sequence and 0/1 label columns; None: bundled course data
    seq_column: str = "seq"
    label_column: str = "bind"
    epochs: int = 500
    batch_size: int = 256
    hidden_dim: int = 16
    lr: float = 1e-2
    seed: int = 0
    test_fraction: float = 0.2
    val_fraction: float = 0.1  # of the training part, as "10% of train as validation"
    plateau_factor: float = 0.5
    plateau_patience: int = 10
    early_stopping_patience: int | None = None
    devices: int = 1
    driver: str = "auto"  # 'scan', 'loop' or 'auto' (the measured choice for the backend)
    checkpoint_every: int = 10  # epochs between checkpoints (see FitConfig)
    out: str = "runs/dna"

    def model_id(self) -> str:
        return f"BiLSTMClassifier(hidden_dim={self.hidden_dim})"


@dataclasses.dataclass
class DNAData:
    """Arrays of a labeled file and its split. x (N, L, 4) float32, lengths (N,) int32,
    y (N,) int32; split: 'train' / 'val' / 'test' index arrays."""

    source: str
    x: np.ndarray
    lengths: np.ndarray
    y: np.ndarray
    split: dict[str, np.ndarray]

    @property
    def variable_length(self) -> bool:
        return bool(self.lengths.min() != self.lengths.max())

    def arrays(self, part: str) -> dict[str, np.ndarray]:
        idx = self.split[part]
        arrays = {"x": self.x[idx], "y": self.y[idx].astype(np.float32)}
        if self.variable_length:
            arrays["length"] = self.lengths[idx]
        return arrays


def load_data(config: DNAConfig) -> DNAData:
    """Read, encode and split the labeled sequences named by config.data (or the bundled file)."""
    path = Path(config.data) if config.data else default_dna_csv()
    records = read_sequences(path, seq_column=config.seq_column, label_column=config.label_column)
    x, lengths = one_hot(records.sequences, names=records.names, source=records.source, allow_ragged=True)
    if len(np.unique(records.labels)) < 2:
        raise InputError(f"{path}: every label is {records.labels[0]}; training needs both 0 and 1")
    try:
        split = split_indices(len(x), seed=config.seed, test_fraction=config.test_fraction,
                              val_fraction=config.val_fraction)
    except ValueError as err:
        raise InputError(f"{path}: {err}") from None
    return DNAData(str(path), x, lengths, records.labels, split)


def build_model(config: DNAConfig) -> BiLSTMClassifier:
    return BiLSTMClassifier(hidden_dim=config.hidden_dim)


def _accuracy(logits, batch):
    return ((logits > 0) == (batch["y"] > 0.5)).astype(logits.dtype)


def make_task(model: BiLSTMClassifier, variable_length: bool) -> Task:
    return Task(
        model=model,
        loss=lambda logits, batch: binary_cross_entropy_with_logits(logits, batch["y"]),
        input_keys=("x", "length") if variable_length else ("x",),
        metrics=lambda logits, batch: {"accuracy": _accuracy(logits, batch)},
        drivers=DRIVERS,
    )


def make_optimizer(lr: float) -> optax.GradientTransformation:
    """Adam (torch defaults: b1 0.9, b2 0.999, eps 1e-8) with the rate as a state value."""
    return optax.inject_hyperparams(optax.adam)(learning_rate=lr)


def _probabilities(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))


def train_and_evaluate(config: DNAConfig, *, progress: bool = True, initial_params=None) -> dict:
    """Train (resuming if config.out holds a checkpoint), test, and write the run folder.

    initial_params: start a new run from these parameters instead of the seed's (e.g. a torch
    model's, from `molml_jax.interop.lstm_params_from_torch`). Returns the summary (also
    written to summary.json).
    """
    run_dir = Path(config.out)
    data = load_data(config)  # bad input fails here, before anything is written
    check_resumable(run_dir, config, PIPELINE)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "config.json", config_record(config, PIPELINE))

    model = build_model(config)
    task = make_task(model, data.variable_length)
    tx = make_optimizer(config.lr)
    engine = Engine(task, tx, batch_size=config.batch_size, devices=config.devices, driver=config.driver)
    sample = tuple(v[:1] for k, v in data.arrays("train").items() if k in task.input_keys)
    state = create_train_state(model, tx, sample, config.seed)
    if initial_params is not None:
        params = jax.tree.map(lambda new, old: np.asarray(new, old.dtype), initial_params, state.params)
        state = state.replace(params=params, opt_state=tx.init(params))
    train, val, test = (engine.put(data.arrays(part)) for part in ("train", "val", "test"))
    fit_config = FitConfig(
        epochs=config.epochs,
        plateau=PlateauConfig(factor=config.plateau_factor, patience=config.plateau_patience),
        early_stopping_patience=config.early_stopping_patience,
        checkpoint_every=config.checkpoint_every,
        progress=progress,
    )
    result = fit(engine, state, train, val, fit_config, run_dir, model_id=config.model_id())

    y_test = data.y[data.split["test"]]
    _, last_logits = engine.evaluate(engine.replicate(result.state), test, return_outputs=True)
    best_state, _ = Checkpoints(run_dir / "checkpoints").restore("best", result.state, expect_model=config.model_id())
    best_metrics, best_logits = engine.evaluate(engine.replicate(best_state), test, return_outputs=True)
    summary = {
        "test_auc": float(roc_auc_score(y_test, _probabilities(best_logits))),
        "test_auc_last_epoch": float(roc_auc_score(y_test, _probabilities(last_logits))),
        "test_loss": best_metrics["loss"],
        "test_accuracy": best_metrics["accuracy"],
        **run_facts(result, engine),
        "n_train": int(len(data.split["train"])),
        "n_val": int(len(data.split["val"])),
        "n_test": int(len(data.split["test"])),
    }
    write_json(run_dir / "summary.json", summary)
    plot_loss_curves(result.history, run_dir / "loss_curve.png",
                     title=f"BiLSTM, hidden {config.hidden_dim}: test AUC {summary['test_auc']:.3f}")
    return summary


def load_run(run_dir: str | Path, *, checkpoint: str = "best"):
    """(config, model, variables) of a trained run; `checkpoint` 'best' or 'latest'."""
    run_dir = Path(run_dir)
    config = stored_config(run_dir, PIPELINE, DNAConfig)
    model = build_model(config)
    tx = make_optimizer(config.lr)
    template = create_train_state(model, tx, (np.zeros((1, 8, 4), np.float32),), 0)
    template = jax.tree.map(np.asarray, template)
    if not (run_dir / "checkpoints").is_dir():
        raise InputError(f"{run_dir}: no checkpoints folder (did training start?)")
    state, _ = Checkpoints(run_dir / "checkpoints", create=False).restore(
        checkpoint, template, expect_model=config.model_id())
    return config, model, {"params": state.params}


def _score(run_dir, input_path, *, seq_column, label_column, batch_size=1024):
    config, model, variables = load_run(run_dir)
    records = read_sequences(input_path, seq_column=seq_column, label_column=label_column,
                             require_labels=False)
    x, lengths = one_hot(records.sequences, names=records.names, source=records.source, allow_ragged=True)
    ragged = lengths.min() != lengths.max()
    apply = jax.jit(lambda v, xb, lb: model.apply(v, xb, lb if ragged else None))
    logits = []
    for start in range(0, len(x), batch_size):
        xb, lb = x[start:start + batch_size], lengths[start:start + batch_size]
        if len(xb) < batch_size and len(x) > batch_size:  # one compiled shape: pad the tail
            pad = batch_size - len(xb)
            xb = np.concatenate([xb, np.zeros((pad,) + xb.shape[1:], xb.dtype)])
            lb = np.concatenate([lb, np.ones(pad, lb.dtype)])
        logits.append(np.asarray(apply(variables, xb, lb))[: min(batch_size, len(x) - start)])
    probability = _probabilities(np.concatenate(logits))
    auc = None
    if records.labels is not None and len(np.unique(records.labels)) == 2:
        auc = float(roc_auc_score(records.labels, probability))
    return records, probability, auc


def predict(run_dir, input_path, output_path, *, seq_column: str = "seq", label_column: str = "bind") -> dict:
    """Write input_path's records with a `probability` column to output_path (input order).

    CSV input keeps all its columns; FASTA input gives id, sequence, probability. Returns
    {'n': count, 'auc': AUC or None (when the input has 0/1 labels)}.
    """
    records, probability, auc = _score(run_dir, input_path, seq_column=seq_column, label_column=label_column)
    if records.table is not None:
        table = records.table.copy()
        table["probability"] = probability
    else:
        table = pd.DataFrame({"id": records.names, "sequence": records.sequences, "probability": probability})
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(output_path, index=False)
    return {"n": len(probability), "auc": auc}


def evaluate(run_dir, input_path, *, seq_column: str = "seq", label_column: str = "bind") -> dict:
    """AUC of the run's best checkpoint on a labeled file (nothing written)."""
    records, probability, auc = _score(run_dir, input_path, seq_column=seq_column, label_column=label_column)
    if records.labels is None:
        raise InputError(f"{input_path}: no label column '{label_column}' to evaluate against")
    if auc is None:
        raise InputError(f"{input_path}: labels are all {records.labels[0]}; AUC needs both 0 and 1")
    return {"n": len(probability), "auc": auc}
