"""The one training engine shared by every pipeline: Task (what a pipeline hands it),
Engine (pmapped step, epoch drivers), the epoch loop (epochs.py) under fit (one run, with
checkpoints and resume) and sweep (K configurations, vmapped or sequential)."""

from molml_jax.train.checkpoint import Checkpoints
from molml_jax.train.engine import AXIS, DeviceData, Engine, batch_plan
from molml_jax.train.epochs import LoopConfig, Tracker, run_epochs
from molml_jax.train.fit import FitConfig, FitResult, fit
from molml_jax.train.losses import binary_cross_entropy_with_logits, mean_squared_error
from molml_jax.train.plateau import PlateauConfig, PlateauState, plateau_update
from molml_jax.train.state import TrainState, create_train_state, learning_rate, with_learning_rate
from molml_jax.train.task import Task

__all__ = [
    "AXIS", "Checkpoints", "DeviceData", "Engine", "FitConfig", "FitResult", "LoopConfig", "PlateauConfig",
    "PlateauState", "Task", "Tracker", "TrainState", "batch_plan", "binary_cross_entropy_with_logits",
    "create_train_state", "fit", "learning_rate", "mean_squared_error", "plateau_update", "run_epochs",
    "with_learning_rate",
]
