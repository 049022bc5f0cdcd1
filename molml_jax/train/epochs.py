"""The epoch loop shared by `fit` (one run, with checkpoints) and `sweep` (K runs at once):
train, validate, track the best epoch, stop early, stop a diverged run, step the plateau
schedule. Everything is kept per configuration in (K,) arrays; one run is K = 1.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Iterator

import numpy as np

from molml_jax.train.engine import DeviceData, Engine, HostData, first_local, where_configs
from molml_jax.train.plateau import PlateauConfig, PlateauState, plateau_update
from molml_jax.train.state import TrainState, learning_rate


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """epochs: the last epoch to train (a resumed run trains up to it).
    plateau: reduce-on-plateau on the validation loss, or None for a constant rate.
    early_stopping_patience: stop a run after this many epochs without a lower validation
      loss (None: never)."""

    epochs: int
    plateau: PlateauConfig | None = None
    early_stopping_patience: int | None = None


@dataclasses.dataclass
class Tracker:
    """Where each of K runs stands: best validation loss and its epoch, epochs without
    improvement, whether it stopped early or diverged, and its plateau schedule. (K,) arrays."""

    best_val_loss: np.ndarray
    best_epoch: np.ndarray
    bad_epochs: np.ndarray
    stopped: np.ndarray
    diverged: np.ndarray
    plateau: PlateauState | None

    @classmethod
    def start(cls, lrs, plateau: PlateauConfig | None) -> "Tracker":
        lrs = np.atleast_1d(np.asarray(lrs, np.float64))
        k = len(lrs)
        return cls(np.full(k, np.inf), np.zeros(k, np.int64), np.zeros(k, np.int64), np.zeros(k, bool),
                   np.zeros(k, bool), PlateauState.start(lrs) if plateau else None)

    @property
    def active(self) -> np.ndarray:
        return ~(self.stopped | self.diverged)

    def update(self, val_loss, train_loss, config: LoopConfig) -> tuple[np.ndarray, np.ndarray]:
        """One epoch of the active runs. Returns (improved, diverged now), (K,) bool each.

        A run diverges when its train or validation loss is not finite; it then stops, and
        its plateau schedule and best record are left as they were."""
        val_loss, train_loss = np.atleast_1d(val_loss), np.atleast_1d(train_loss)
        was_active = self.active
        diverged_now = was_active & ~(np.isfinite(val_loss) & np.isfinite(train_loss))
        stepping = was_active & ~diverged_now
        improved = stepping & (val_loss < self.best_val_loss)
        self.best_val_loss = np.where(improved, val_loss, self.best_val_loss)
        self.bad_epochs = np.where(improved, 0, self.bad_epochs + stepping)
        self.diverged = self.diverged | diverged_now
        if config.early_stopping_patience is not None:
            self.stopped = self.stopped | (stepping & (self.bad_epochs >= config.early_stopping_patience))
        if self.plateau is not None:
            stepped = plateau_update(self.plateau, np.where(stepping, val_loss, np.nan), config.plateau)
            keep = lambda new, old: np.where(stepping, new, old)
            self.plateau = PlateauState(*(keep(n, o) for n, o in zip(
                (stepped.lr, stepped.best, stepped.num_bad_epochs),
                (self.plateau.lr, self.plateau.best, self.plateau.num_bad_epochs))))
        return improved, diverged_now

    def mark_best(self, improved: np.ndarray, epoch: int) -> None:
        self.best_epoch = np.where(improved, epoch, self.best_epoch)

    def to_json(self) -> dict:
        record = {k: np.asarray(getattr(self, k)).tolist()
                  for k in ("best_val_loss", "best_epoch", "bad_epochs", "stopped", "diverged")}
        record["best_val_loss"] = [float(v) if math.isfinite(v) else "inf" for v in record["best_val_loss"]]
        record["plateau"] = self.plateau.to_json() if self.plateau else None
        return record

    @classmethod
    def from_json(cls, record: dict) -> "Tracker":
        return cls(np.asarray([float(v) for v in record["best_val_loss"]], np.float64),
                   np.asarray(record["best_epoch"], np.int64), np.asarray(record["bad_epochs"], np.int64),
                   np.asarray(record["stopped"], bool), np.asarray(record["diverged"], bool),
                   PlateauState.from_json(record["plateau"]) if record.get("plateau") else None)


@dataclasses.dataclass
class EpochResult:
    """What one epoch did: per-run history rows (one per configuration, None for a run that
    was not active), which runs improved or diverged, and the state after it."""

    epoch: int
    rows: list[dict | None]
    improved: np.ndarray
    diverged: np.ndarray
    state: TrainState  # replicated: the new state, with diverged runs left at their last good one
    seconds: float


def run_epochs(engine: Engine, state: TrainState, train: DeviceData | HostData, val: DeviceData | HostData,
               config: LoopConfig,
               tracker: Tracker, *, start: int = 0, order_rng=None) -> Iterator[EpochResult]:
    """Train epochs start+1 .. config.epochs of a replicated state (stacked over K
    configurations when engine.configs), yielding after each one. Stops when no run is active.

    order_rng: raw key data that orders the batches (default: the state's own rng), so that
    every configuration of a sweep sees the same batches.
    """
    stacked = engine.configs is not None
    for epoch in range(start + 1, config.epochs + 1):
        active = tracker.active
        if not active.any():
            return
        lrs = first_local(learning_rate(state.opt_state))  # (K,) or ()
        began = time.perf_counter()
        candidate, train_metrics = engine.train_epoch(state, train, epoch, order_rng=order_rng,
                                                      active=active if stacked else None)
        val_metrics = engine.evaluate(candidate, val)
        seconds = time.perf_counter() - began
        improved, diverged = tracker.update(val_metrics["loss"], train_metrics["loss"], config)
        tracker.mark_best(improved, epoch)
        # a donating engine kept the last good state inside the epoch (the old one is gone)
        state = candidate if engine.donates_state else _keep_last_good(candidate, state, diverged, stacked)
        # compared in the state's float32: a float64 schedule value is not a change of rate
        if tracker.plateau is not None and np.any(tracker.plateau.lr.astype(lrs.dtype) != np.atleast_1d(lrs)):
            state = engine.with_learning_rate(state, tracker.plateau.lr if stacked else float(tracker.plateau.lr[0]))
        rows = []
        for j in range(len(active)):
            if not active[j]:
                rows.append(None)
                continue
            pick = (lambda v: float(np.asarray(v)[j])) if stacked else float
            row = {"epoch": epoch, "train_loss": pick(train_metrics["loss"]), "val_loss": pick(val_metrics["loss"]),
                   "lr": float(np.atleast_1d(lrs)[j]), "epoch_seconds": seconds}
            row.update({f"val_{k}": pick(v) for k, v in val_metrics.items() if k != "loss"})
            rows.append(row)
        yield EpochResult(epoch, rows, improved, diverged, state, seconds)


def _keep_last_good(candidate: TrainState, previous: TrainState, diverged: np.ndarray, stacked: bool) -> TrainState:
    """The candidate state, except for runs whose loss became non-finite this epoch."""
    if not diverged.any():
        return candidate
    if not stacked:
        return previous
    return where_configs(~diverged, candidate, previous, axis=1)  # replicated: (devices, K, ...)
