"""Reduce-on-plateau learning rate, exactly as torch.optim.lr_scheduler.ReduceLROnPlateau.

Fed once per epoch with the validation loss, outside the jitted step; the new rate goes
into the optimizer state (no recompiles). Works elementwise on arrays, so one call serves
a vector of configurations in a sweep.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class PlateauConfig:
    """torch defaults for mode='min', threshold_mode='rel', cooldown=0, min_lr=0, eps=1e-8;
    factor and patience are the course's (0.5, 10)."""

    factor: float = 0.5
    patience: int = 10
    threshold: float = 1e-4
    min_lr: float = 0.0
    eps: float = 1e-8


@dataclasses.dataclass(frozen=True)
class PlateauState:
    lr: np.ndarray
    best: np.ndarray
    num_bad_epochs: np.ndarray

    @classmethod
    def start(cls, lr) -> "PlateauState":
        lr = np.asarray(lr, np.float64)
        return cls(lr=lr, best=np.full(lr.shape, np.inf), num_bad_epochs=np.zeros(lr.shape, np.int64))

    def to_json(self) -> dict:
        return {k: np.asarray(v).tolist() for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_json(cls, d: dict) -> "PlateauState":
        return cls(np.asarray(d["lr"], np.float64), np.asarray(d["best"], np.float64),
                   np.asarray(d["num_bad_epochs"], np.int64))


def plateau_update(state: PlateauState, value, config: PlateauConfig) -> PlateauState:
    """One epoch's step. torch: better iff value < best * (1 - threshold); after MORE than
    `patience` bad epochs, lr <- max(lr * factor, min_lr) unless that changes it by <= eps."""
    value = np.asarray(value, np.float64)
    better = value < state.best * (1.0 - config.threshold)  # NaN is never better
    best = np.where(better, value, state.best)
    bad = np.where(better, 0, state.num_bad_epochs + 1)
    reduce = bad > config.patience
    new_lr = np.maximum(state.lr * config.factor, config.min_lr)
    lr = np.where(reduce & (state.lr - new_lr > config.eps), new_lr, state.lr)
    bad = np.where(reduce, 0, bad)
    return PlateauState(lr=lr, best=best, num_bad_epochs=bad)
