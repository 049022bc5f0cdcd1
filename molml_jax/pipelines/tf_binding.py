"""TF-binding profiles: a residual 1-D CNN predicting a motif score for every base of a
window (the TF-binding learning-rate study).

    from molml_jax.pipelines import tf_binding as tf
    summary = tf.train_and_evaluate(tf.Config(epochs=20, out="runs/tf"))
    tf.predict("runs/tf", "windows.tsv.gz", "predicted_scores.tsv.gz")
    scores = tf.predict_arrays("runs/tf", one_hot_windows)        # (N, L, 4) -> (N, L)
    table = tf.sweep(tf.Config(epochs=5, out="runs/tf_sweep"), lrs=[1e-2, 1e-3, 1e-4])

The model's LayerNorm has a learned (length, channels) scale, as the study's
LayerNorm([C, L]): a trained model takes windows of its training length only (stored in
config.json as `window_length`); others are refused with one clear line.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from pathlib import Path

import numpy as np
import optax

from molml_jax.data import one_hot
from molml_jax.data.strands import random_reverse_complement
from molml_jax.data.tf_binding import read_tf_binding, read_windows, simulate_tf_binding, write_scores
from molml_jax.errors import InputError
from molml_jax.metrics.regression import moment_sums, pearson, pearson_from_moments
from molml_jax.models.cnn import BindingPredictorCNN
from molml_jax.pipelines import common
from molml_jax.pipelines.common import setting
from molml_jax.pipelines.ensemble import load_ensemble
from molml_jax.train import Task, mean_squared_error

_this = sys.modules[__name__]  # what the shared verbs in `common` are given
# Measured: convolutions inside lax.scan are several times slower on XLA:CPU, so on CPU the
# CNN runs a Python loop over the jitted step; scanned epochs on accelerators.
DRIVERS = {"cpu": "loop", "gpu": "scan", "tpu": "scan"}
# Measured (README, "Sweeps"): vmapped configurations train slower than sequential ones on
# CPU (the native convolutions run them one by one); vmap on accelerators.
SWEEP_PARALLEL = {"cpu": "sequential", "gpu": "vmap", "tpu": "vmap"}


@dataclasses.dataclass
class Config:
    """Every setting of a TF-binding run; the defaults are the study's. Saved as config.json."""

    data: str | None = setting(None, "prepared dataset folder (from `prepare`); instead of --sequences/--scores "
                                     "(its split is used)")
    sequences: str | None = setting(None, "sequences TSV(.gz): window_name, sequence (with --scores; none: simulated windows)", data=True)
    scores: str | None = setting(None, "scores TSV(.gz): one column per window, one row per base", data=True)
    simulate_windows: int = setting(5000, "simulated windows (when no files are given)", positive=True, data=True)
    simulate_length: int = setting(300, "length of simulated windows (bp)", positive=True, data=True)
    simulate_seed: int = setting(0, "seed of the simulated windows", data=True)
    simulate_motifs: str = setting("CTCF", "motifs planted in simulated windows: comma-separated JASPAR IDs or names, or 'all'", data=True)
    window_length: int | None = setting(None, "window length the model is built for; none: the data's", positive=True)
    epochs: int = setting(100, "epochs to train (a resumed run trains up to this number)", positive=True)
    batch_size: int = setting(64, "windows per batch", positive=True)
    lr: float = setting(1e-2, "AdamW learning rate", positive=True)
    weight_decay: float = setting(1e-5, "AdamW decoupled weight decay")
    num_channels: int = setting(32, "convolution channels", positive=True)
    num_blocks: int = setting(3, "residual blocks", positive=True)
    kernel_size: int = setting(3, "convolution kernel size (odd)", positive=True)
    dropout_rate: float = setting(0.2, "dropout rate inside the residual blocks")
    val_fraction: float = setting(0.2, "fraction of the windows used for validation", data=True)
    early_stopping_patience: int | None = setting(10, "stop after this many epochs without a lower validation loss", positive=True)
    seed: int = setting(0, "seed of the split (not of a prepared dataset's), the initial weights, dropout and the batch order")
    rc_augment: bool = setting(False, "reverse-complement each training window (and its score profile) with probability 1/2, on the device")
    devices: int = setting(1, "data-parallel devices (on CPU: forced host devices, one per core)", positive=True)
    driver: str = setting("auto", "epoch driver; auto: the one measured faster on this backend", choices=("auto", "scan", "loop"))
    stream: bool | None = setting(None, "read batches from the host (grain) instead of keeping the splits on the devices; none: when they exceed half a device's memory")
    checkpoint_every: int = setting(1, "save the resumable `latest` checkpoint every N epochs (and at the end)", positive=True)
    out: str = setting("runs/tf_binding", "run folder; a run already there is resumed")

    def model_id(self) -> str:
        return (f"BindingPredictorCNN(channels={self.num_channels}, blocks={self.num_blocks}, "
                f"kernel={self.kernel_size}, length={self.window_length})")


@dataclasses.dataclass
class TFData:
    """Windows and their split. x (N, L, 4) float32, y (N, L) float32, names (N,);
    split 'train'/'val'.

    From a prepared dataset (`prepared` set), names, x and y are LazyColumns over its
    records (train, val in order; split = consecutive ranges), read when indexed."""

    source: str
    names: list[str]
    x: np.ndarray
    y: np.ndarray
    split: dict[str, np.ndarray]
    split_seed: int | None = None
    prepared: object = None  # molml_jax.datasets.Prepared

    def arrays(self, part: str) -> dict[str, np.ndarray]:
        if self.prepared is not None:
            return self.reader(part).read(np.arange(len(self.split[part])))
        idx = self.split[part]
        return {"x": self.x[idx], "y": self.y[idx]}

    def reader(self, part: str):
        """Random access to a part: .n, .read(indices) == arrays(part) at those indices."""
        from molml_jax.datasets import ArrayReader

        if self.prepared is None:
            return ArrayReader(self.arrays(part))
        from molml_jax.datasets import PreparedReader  # tensorflow_datasets: only for prepared data

        return PreparedReader(self.prepared, part, _batch_from_records)


def _batch_from_records(records: dict) -> dict[str, np.ndarray]:
    return {"x": records["x"].astype(np.float32), "y": records["y"].astype(np.float32)}


def _from_prepared(config: Config) -> TFData:
    from molml_jax.datasets import open_for_config

    prepared = open_for_config(config, "tf_binding")
    return TFData(prepared.provenance(), prepared.column("name"), prepared.column("x", lambda v: v.astype(np.float32)),
                  prepared.column("y"), prepared.split(), split_seed=prepared.split_seed, prepared=prepared)


def load_data(config: Config) -> TFData:
    """The study's two files, or (neither given) simulated windows; then a seeded split. Or,
    when config.data names a prepared dataset folder, its stored split (read lazily)."""
    if config.data is not None:
        from molml_jax.datasets import is_prepared, open_prepared

        if not is_prepared(config.data):
            open_prepared(config.data, "tf_binding")  # says what is wrong with it
        return _from_prepared(config)
    if (config.sequences is None) != (config.scores is None):
        raise InputError("give both --sequences and --scores, or neither (simulated data)")
    if config.sequences:
        data = read_tf_binding(config.sequences, config.scores)
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
                  {"val": perm[:n_val], "train": perm[n_val:]}, split_seed=config.seed)


def prepare(config: Config, out):
    """Write the windows and split that load_data(config) gives as a prepared dataset in the
    folder `out` (molml_tf_binding/1.0.0/...). Returns the opened molml_jax.datasets.Prepared.
    Simulated windows are generated whole (one copy in memory) and written in chunks."""
    from molml_jax.datasets import check_target, data_settings, source_checksums, write_prepared

    if config.data is not None:
        raise InputError(f"{config.data}: prepare reads --sequences/--scores or simulates; --data is its output")
    check_target(out, "tf_binding")  # before the data is read
    data = load_data(config)
    if config.sequences:
        sources = {**source_checksums(config.sequences), **source_checksums(config.scores)}
        origin = f"sequences {Path(config.sequences).name} + scores {Path(config.scores).name}"
    else:
        sources = {"simulated": {k: getattr(config, k) for k in
                                 ("simulate_windows", "simulate_length", "simulate_seed", "simulate_motifs")}}
        origin = data.source
    columns = {"x": data.x, "y": data.y, "name": np.array(data.names, dtype=object)}
    return write_prepared(out, "tf_binding", columns, data.split,
                          metadata={"settings": data_settings(config), "origin": origin, "sources": sources})


def motif_list(text: str | None) -> list[str] | None:
    """'CTCF,SP1' -> ['CTCF', 'SP1']; 'all' or None -> None (every bundled motif)."""
    if text is None or text.strip().lower() == "all":
        return None
    return [part.strip() for part in text.split(",") if part.strip()]


def _resolve(config: Config, data: TFData) -> Config:
    """The window length comes from the data; a stated one must agree with it."""
    length = data.x.shape[1]
    if config.window_length is not None and config.window_length != length:
        raise InputError(f"{data.source}: windows are {length} bp, not --window-length {config.window_length}")
    return dataclasses.replace(config, window_length=length)


def build_model(config: Config) -> BindingPredictorCNN:
    if config.window_length is None:
        raise InputError("tf_binding.build_model: config.window_length is not set (load_data + train set it)")
    return BindingPredictorCNN(num_channels=config.num_channels, num_blocks=config.num_blocks,
                               kernel_size=config.kernel_size, dropout_rate=config.dropout_rate,
                               length=config.window_length)


def make_task(config: Config, model: BindingPredictorCNN) -> Task:
    """MSE per window; Pearson R over all bases from moment sums; --rc-augment turns
    training windows and their score profiles to the other strand at random, on the device."""
    augment = None
    if config.rc_augment:
        augment = functools.partial(random_reverse_complement, probability=0.5, profile_keys=("y",))
    return Task(
        model=model,
        loss=lambda pred, batch: mean_squared_error(pred, batch["y"]),
        metrics=lambda pred, batch: moment_sums(pred, batch["y"]),
        summarize=pearson_from_moments,
        augment=augment,
        train_kwargs={"example_ids": "_position"},  # per-example dropout: same on 1 or N devices
        drivers=DRIVERS,
        sweep_parallel=SWEEP_PARALLEL,
    )


def make_optimizer(config: Config) -> optax.GradientTransformation:
    """AdamW as torch's (b1 0.9, b2 0.999, eps 1e-8, decoupled decay), rate as a state value."""
    return optax.inject_hyperparams(optax.adamw)(learning_rate=config.lr, weight_decay=config.weight_decay)


def _figures(run_dir: Path, config: Config, data: TFData, outputs: dict) -> None:
    from molml_jax.plots import plot_profiles

    val_idx = data.split["val"][:4]
    plot_profiles(data.y[val_idx], outputs["val"][:4], [data.names[i] for i in val_idx],
                  run_dir / "profile_examples.png")


HOOKS = common.Hooks(
    name="tf_binding",
    title="TF-binding CNN",
    example_inputs=lambda config: (np.zeros((1, config.window_length, 4), np.float32),),
    resolve=_resolve,
    figures=_figures,
)


def train_and_evaluate(config: Config, *, progress: bool = True) -> dict:
    """Train with early stopping (resuming if config.out holds a checkpoint), evaluate the
    best checkpoint on validation, and write the run folder. Returns the summary
    (summary.json): best_val_loss, best_val_pearson, last_val_..., best_epoch, ..."""
    return common.train_and_evaluate(_this, config, progress=progress)


def sweep(config: Config, lrs, *, seeds: int = 1, parallel: str = "auto", progress: bool = True,
          wandb: bool = False) -> dict:
    """Learning rates x seeds on the same split and batches (see common.sweep)."""
    return common.sweep(_this, config, lrs, seeds=seeds, parallel=parallel, progress=progress, wandb=wandb)


def load_run(run_dir, checkpoint: str = "best"):
    """(config, model, variables) of a trained run; `checkpoint` 'best' or 'latest'."""
    return common.load_run(_this, run_dir, checkpoint)


def predict_arrays(run, inputs, *, batch_size: int = 256, rc_average: bool = False) -> np.ndarray:
    """Predicted score per base of one-hot windows.

    run: a run folder, 'RUN1,RUN2,...' or a list of run folders (an ensemble: the mean of
    the members' scores), or what load_run / ensemble.load_ensemble returned. inputs:
    (N, L, 4) (or one (L, 4)) one-hot in A, C, G, T order, L the run's window length.
    rc_average: the mean of each window's scores and those of its reverse complement
    (turned back to the forward strand). Returns scores (N, L) float32 ((L,) for one).
    """
    ensemble = load_ensemble(_this, run)
    config = ensemble.config
    x = common.check_array(inputs, "inputs", ndim=(2, 3), last=4, what="one-hot windows (N, L, 4) or (L, 4)")
    single = x.ndim == 2
    x = x[None] if single else x
    if x.shape[1] != config.window_length:
        raise InputError(f"inputs: windows of {x.shape[1]} bp, but the model was trained on "
                         f"{config.window_length} bp windows (its LayerNorm is per position)")
    scores = ensemble.outputs(x, rc_average=rc_average, batch_size=batch_size)
    return scores[0] if single else scores


def _predict_windows(run, run_dir, x: np.ndarray, source, rc_average: bool) -> np.ndarray:
    if x.shape[1] != run.config.window_length:
        raise InputError(f"{source}: windows are {x.shape[1]} bp, but the model in {run_dir} was trained "
                         f"on {run.config.window_length} bp windows (its LayerNorm is per position)")
    return predict_arrays(run, x, rc_average=rc_average)


def predict(run_dir, input, output, *, rc_average: bool = False) -> dict:
    """Score every window of `input` (the study's sequences TSV(.gz), or FASTA) and write
    `output` in the study's scores format (one column per window named by window_name or
    FASTA id, one row per base; gzip when it ends in .gz): it can be given back as --scores.
    run_dir: a run folder or an ensemble (see predict_arrays); rc_average: both strands.
    Returns {'n': windows, 'length': bases per window, 'output': path}."""
    run = load_ensemble(_this, run_dir)  # a bad run folder is named before the input is read
    names, _, x = read_windows(input)
    scores = _predict_windows(run, run_dir, x, input, rc_average)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    write_scores(output, names, scores)
    return {"n": len(names), "length": int(scores.shape[1]), "output": str(output)}


def evaluate(run_dir, input, scores, *, rc_average: bool = False) -> dict:
    """Pearson R over all bases and MSE of the run's (or an ensemble's; both strands with
    rc_average) predictions against a scores file (nothing written). Returns {'n', 'pearson', 'mse'}."""
    run = load_ensemble(_this, run_dir)
    data = read_tf_binding(input, scores)
    predicted = _predict_windows(run, run_dir, data.x, input, rc_average)
    return {"n": len(data), "pearson": pearson(predicted, data.y),
            "mse": float(np.mean((predicted.astype(np.float64) - data.y) ** 2))}
