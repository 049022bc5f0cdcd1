"""DNA binding sites: bidirectional-LSTM classifier (the course's problem set 2, part 1).

    from molml_jax.pipelines import dna
    summary = dna.train_and_evaluate(dna.Config(epochs=50, out="runs/dna"))
    dna.predict("runs/dna", "my_sequences.fasta", "probabilities.csv")
    probabilities = dna.predict_arrays("runs/dna", one_hot_sequences)   # (N, L, 4) -> (N,)
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from pathlib import Path

import numpy as np
import optax
import pandas as pd

from molml_jax.data import default_dna_csv, one_hot, read_sequences, split_indices
from molml_jax.data.strands import random_reverse_complement
from molml_jax.errors import InputError
from molml_jax.metrics.classification import roc_auc, sigmoid
from molml_jax.models import BiLSTMClassifier
from molml_jax.pipelines import common
from molml_jax.pipelines.common import setting
from molml_jax.pipelines.ensemble import load_ensemble
from molml_jax.train import PlateauConfig, Task, binary_cross_entropy_with_logits

_this = sys.modules[__name__]  # what the shared verbs in `common` are given
# Measured: on XLA:CPU the scanned epoch is the faster driver for the BiLSTM (its step is
# small, so per-step dispatch dominates a Python loop); scan is the usual win on GPU/TPU.
DRIVERS = {"cpu": "scan", "gpu": "scan", "tpu": "scan"}
# Measured (README, "Sweeps"): 8 seeds vmapped train faster than one after another on
# XLA:CPU; on accelerators a vmapped LSTM step costs little more than one.
SWEEP_PARALLEL = {"cpu": "vmap", "gpu": "vmap", "tpu": "vmap"}


@dataclasses.dataclass
class Config:
    """Every setting of a DNA run; the defaults are the course's. Saved as config.json."""

    data: str | None = setting(None, "CSV/TSV with a sequence and a 0/1 label column, or a prepared dataset folder "
                                     "(from `prepare`; its split is used); none: the bundled course data", data=True)
    seq_column: str = setting("seq", "column of the sequences", data=True)
    label_column: str = setting("bind", "column of the 0/1 labels", data=True)
    epochs: int = setting(500, "epochs to train (a resumed run trains up to this number)", positive=True)
    batch_size: int = setting(256, "examples per batch", positive=True)
    hidden_dim: int = setting(16, "LSTM hidden size (and the MLP's width)", positive=True)
    lr: float = setting(1e-2, "Adam learning rate (then reduced on plateaus)", positive=True)
    seed: int = setting(0, "seed of the split (not of a prepared dataset's), the initial weights and the batch order")
    rc_augment: bool = setting(False, "reverse-complement each training sequence with probability 1/2, on the device")
    test_fraction: float = setting(0.2, "fraction of the examples held out for testing", data=True)
    val_fraction: float = setting(0.1, "fraction of the rest used for validation (course: 10% of train)", data=True)
    plateau_factor: float = setting(0.5, "learning-rate factor on a validation-loss plateau", positive=True)
    plateau_patience: int = setting(10, "epochs without improvement before the rate is reduced")
    early_stopping_patience: int | None = setting(None, "stop after this many epochs without a lower validation loss; none: never", positive=True)
    devices: int = setting(1, "data-parallel devices (on CPU: forced host devices, one per core)", positive=True)
    driver: str = setting("auto", "epoch driver; auto: the one measured faster on this backend", choices=("auto", "scan", "loop"))
    stream: bool | None = setting(None, "read batches from the host (grain) instead of keeping the splits on the devices; none: when they exceed half a device's memory")
    checkpoint_every: int = setting(10, "save the resumable `latest` checkpoint every N epochs (and at the end)", positive=True)
    out: str = setting("runs/dna", "run folder; a run already there is resumed")

    def model_id(self) -> str:
        return f"BiLSTMClassifier(hidden_dim={self.hidden_dim})"


@dataclasses.dataclass
class DNAData:
    """Arrays of a labeled file and its split. x (N, L, 4) float32, lengths (N,) int32,
    y (N,) int32, names (N,); split: 'train' / 'val' / 'test' index arrays.

    From a prepared dataset (`prepared` set), x, lengths, y and names are LazyColumns over
    its records (train, val, test in order; split = consecutive ranges): nothing is held
    in memory until a part is read."""

    source: str
    x: np.ndarray
    lengths: np.ndarray
    y: np.ndarray
    split: dict[str, np.ndarray]
    names: object = None
    split_seed: int | None = None
    prepared: object = None  # molml_jax.datasets.Prepared

    @property
    def variable_length(self) -> bool:
        if self.prepared is not None:
            return bool(self.prepared.metadata["variable_length"])
        return bool(self.lengths.min() != self.lengths.max())

    def arrays(self, part: str) -> dict[str, np.ndarray]:
        """The split's batch arrays: x, y (and `length` when lengths vary)."""
        if self.prepared is not None:
            return self.reader(part).read(np.arange(len(self.split[part])))
        idx = self.split[part]
        arrays = {"x": self.x[idx], "y": self.y[idx].astype(np.float32)}
        if self.variable_length:
            arrays["length"] = self.lengths[idx]
        return arrays

    def reader(self, part: str):
        """Random access to a part: .n, .read(indices) == arrays(part) at those indices."""
        from molml_jax.datasets import ArrayReader

        if self.prepared is None:
            return ArrayReader(self.arrays(part))
        from molml_jax.datasets import PreparedReader  # tensorflow_datasets: only for prepared data

        variable = self.variable_length
        return PreparedReader(self.prepared, part, lambda r: _batch_from_records(r, variable))


def _batch_from_records(records: dict, variable_length: bool) -> dict[str, np.ndarray]:
    batch = {"x": records["x"].astype(np.float32), "y": records["label"].astype(np.float32)}
    if variable_length:
        batch["length"] = records["length"].astype(np.int32)
    return batch


def _from_prepared(config: Config) -> DNAData:
    from molml_jax.datasets import open_for_config

    prepared = open_for_config(config, "dna")
    return DNAData(prepared.provenance(), prepared.column("x", lambda v: v.astype(np.float32)),
                   prepared.column("length", lambda v: v.astype(np.int32)),
                   prepared.column("label", lambda v: v.astype(np.int32)), prepared.split(),
                   names=prepared.column("name"), split_seed=prepared.split_seed, prepared=prepared)


def load_data(config: Config) -> DNAData:
    """Read, encode and split the labeled sequences named by config.data (or the bundled
    file); or, when config.data is a prepared dataset folder, its stored split (lazily)."""
    from molml_jax.datasets import is_prepared

    if is_prepared(config.data):
        return _from_prepared(config)
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
    return DNAData(str(path), x, lengths, records.labels, split, names=np.array(records.names, dtype=object),
                   split_seed=config.seed)


def prepare(config: Config, out):
    """Write the data and split that load_data(config) gives as a prepared dataset in the
    folder `out` (molml_dna/1.0.0/...). Returns the opened molml_jax.datasets.Prepared."""
    from molml_jax.datasets import check_target, data_settings, is_prepared, source_checksums, write_prepared

    if is_prepared(config.data):
        raise InputError(f"{config.data}: is already a prepared dataset; give the original file")
    check_target(out, "dna")  # before the data is read
    data = load_data(config)
    path = Path(data.source)
    columns = {"x": data.x, "length": data.lengths, "label": data.y, "name": data.names}
    metadata = {"settings": data_settings(config), "origin": f"CSV {path.name}",
                "sources": source_checksums(path), "variable_length": data.variable_length}
    return write_prepared(out, "dna", columns, data.split, metadata=metadata)


def build_model(config: Config) -> BiLSTMClassifier:
    return BiLSTMClassifier(hidden_dim=config.hidden_dim)


def _accuracy(logits, batch):
    return ((logits > 0) == (batch["y"] > 0.5)).astype(logits.dtype)


def make_task(config: Config, model: BiLSTMClassifier) -> Task:
    """Binary cross entropy on the logit; `length` is passed when the split has it;
    --rc-augment turns training sequences to the other strand at random, on the device."""
    return Task(
        model=model,
        loss=lambda logits, batch: binary_cross_entropy_with_logits(logits, batch["y"]),
        input_keys=("x", "length"),
        metrics=lambda logits, batch: {"accuracy": _accuracy(logits, batch)},
        augment=functools.partial(random_reverse_complement, probability=0.5) if config.rc_augment else None,
        drivers=DRIVERS,
        sweep_parallel=SWEEP_PARALLEL,
    )


def make_optimizer(config: Config) -> optax.GradientTransformation:
    """Adam (torch defaults: b1 0.9, b2 0.999, eps 1e-8) with the rate as a state value."""
    return optax.inject_hyperparams(optax.adam)(learning_rate=config.lr)


def _split_metrics(data: DNAData, part: str, logits: np.ndarray) -> dict:
    return {"auc": roc_auc(data.y[data.split[part]], sigmoid(logits))}


HOOKS = common.Hooks(
    name="dna",
    title="BiLSTM",
    example_inputs=lambda config: (np.zeros((1, 8, 4), np.float32),),
    split_metrics=_split_metrics,
    plateau=lambda config: PlateauConfig(factor=config.plateau_factor, patience=config.plateau_patience),
)


def train_and_evaluate(config: Config, *, progress: bool = True, initial_params=None) -> dict:
    """Train (resuming if config.out holds a checkpoint), test, and write the run folder.

    initial_params: start a new run from these parameters instead of the seed's (e.g. a torch
    model's, from `molml_jax.interop.lstm_params_from_torch`). Returns the summary (also
    summary.json): test_auc of the best-validation checkpoint, last_test_auc, ...
    """
    return common.train_and_evaluate(_this, config, progress=progress,
                                     initial_params=initial_params)


def sweep(config: Config, lrs, *, seeds: int = 1, parallel: str = "auto", progress: bool = True,
          wandb: bool = False) -> dict:
    """Learning rates x seeds on the same split and batches (see common.sweep)."""
    return common.sweep(_this, config, lrs, seeds=seeds, parallel=parallel,
                        progress=progress, wandb=wandb)


def load_run(run_dir, checkpoint: str = "best"):
    """(config, model, variables) of a trained run; `checkpoint` 'best' or 'latest'."""
    return common.load_run(_this, run_dir, checkpoint)


def predict_arrays(run, inputs, *, lengths=None, batch_size: int = 1024, rc_average: bool = False) -> np.ndarray:
    """Binding probabilities of one-hot sequences.

    run: a run folder, 'RUN1,RUN2,...' or a list of run folders (an ensemble: the mean of
    the members' logits), or what load_run / ensemble.load_ensemble returned. inputs:
    (N, L, 4) (or one (L, 4)) one-hot in A, C, G, T order (molml_jax.data.one_hot), zero rows
    for N. lengths: (N,) real lengths when the sequences were zero-padded to a common L
    (None: all L). rc_average: the mean of the logits of each sequence and its reverse
    complement. Returns probabilities (N,) float64 (a float for one sequence).
    """
    ensemble = load_ensemble(_this, run)
    x = common.check_array(inputs, "inputs", ndim=(2, 3), last=4, what="one-hot sequences (N, L, 4) or (L, 4)")
    single = x.ndim == 2
    x = x[None] if single else x
    if lengths is not None:
        lengths = np.asarray(lengths, np.int32).reshape(-1)
        if len(lengths) != len(x) or lengths.min() < 1 or lengths.max() > x.shape[1]:
            raise InputError(f"lengths: expected {len(x)} lengths in 1..{x.shape[1]}, got {lengths.tolist()[:5]}...")
    logits = ensemble.outputs(x, lengths, rc_average=rc_average, batch_size=batch_size)
    probabilities = sigmoid(logits.astype(np.float64))
    return probabilities[0] if single else probabilities


def _score(run_dir, input_path, *, seq_column, label_column, rc_average):
    run = load_ensemble(_this, run_dir)
    records = read_sequences(input_path, seq_column=seq_column, label_column=label_column, require_labels=False)
    x, lengths = one_hot(records.sequences, names=records.names, source=records.source, allow_ragged=True)
    ragged = lengths.min() != lengths.max()
    probability = predict_arrays(run, x, lengths=lengths if ragged else None, rc_average=rc_average)
    auc = roc_auc(records.labels, probability) if records.labels is not None else None
    return records, probability, auc


def predict(run_dir, input, output, *, seq_column: str = "seq", label_column: str = "bind",
            rc_average: bool = False) -> dict:
    """Write the records of `input` (CSV/TSV or FASTA) with a `probability` column to the CSV
    `output`, in input order. CSV input keeps all its columns; FASTA gives id, sequence,
    probability. run_dir: a run folder or an ensemble (see predict_arrays); rc_average: both
    strands. Returns {'n': count, 'auc': AUC or None (when the input has 0/1 labels)}.
    """
    records, probability, auc = _score(run_dir, input, seq_column=seq_column, label_column=label_column,
                                       rc_average=rc_average)
    if records.table is not None:
        table = records.table.copy()
        table["probability"] = probability
    else:
        table = pd.DataFrame({"id": records.names, "sequence": records.sequences, "probability": probability})
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(output, index=False)
    return {"n": len(probability), "auc": auc}


def evaluate(run_dir, input, *, seq_column: str = "seq", label_column: str = "bind",
             rc_average: bool = False) -> dict:
    """AUC of the run's best checkpoint (or an ensemble's; both strands with rc_average) on a
    labeled file (nothing written)."""
    records, probability, auc = _score(run_dir, input, seq_column=seq_column, label_column=label_column,
                                       rc_average=rc_average)
    if records.labels is None:
        raise InputError(f"{input}: no label column '{label_column}' to evaluate against")
    if auc is None:
        raise InputError(f"{input}: labels are all {records.labels[0]}; AUC needs both 0 and 1")
    return {"n": len(probability), "auc": auc}
