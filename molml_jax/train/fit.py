"""The epoch loop: plateau schedule, early stopping, checkpoints, resume, divergence guard."""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from molml_jax.errors import TrainingDiverged
from molml_jax.train.checkpoint import Checkpoints
from molml_jax.train.engine import DeviceData, Engine
from molml_jax.train.plateau import PlateauConfig, PlateauState, plateau_update
from molml_jax.train.run_folder import write_history
from molml_jax.train.state import TrainState, learning_rate, with_learning_rate


@dataclasses.dataclass(frozen=True)
class FitConfig:
    """epochs: total epochs (a resumed run trains up to this number).
    plateau: reduce-on-plateau on the validation loss, or None for a constant rate.
    early_stopping_patience: stop after this many epochs without a lower validation loss.
    checkpoint_every: save every N epochs (and at the end, and before a divergence error):
      `latest`, and `best` once a later epoch replaces a best `latest` (see checkpoint.py).
      Saving is asynchronous, but on a 2-core machine a save (~80 ms of CPU for the CNN's
      state) every 0.3 s DNA epoch costs ~15% of the epoch; a run interrupted between
      saves resumes from the last one."""

    epochs: int
    plateau: PlateauConfig | None = None
    early_stopping_patience: int | None = None
    checkpoint_every: int = 1
    progress: bool = True


@dataclasses.dataclass
class FitResult:
    state: TrainState  # host copy after the last epoch
    history: list[dict]
    best_epoch: int
    best_val_loss: float
    epochs_run: int
    stopped_early: bool
    resumed_from: int | None
    compile_seconds: float | None  # first epoch of this process minus the median epoch

    @property
    def median_epoch_seconds(self) -> float | None:
        times = [row["epoch_seconds"] for row in self.history[1:]] or [r["epoch_seconds"] for r in self.history]
        return statistics.median(times) if times else None


def fit(engine: Engine, state: TrainState, train: DeviceData, val: DeviceData, config: FitConfig,
        run_dir: str | Path, *, model_id: str) -> FitResult:
    """Train for config.epochs, resuming from run_dir/checkpoints/latest when it exists.

    `state` is a fresh host state (used as is for a new run, as the structure to restore
    into when resuming). `model_id` names the model in checkpoints so that a checkpoint of
    another model is refused clearly. Writes run_dir/history.csv every epoch.
    """
    run_dir = Path(run_dir)
    checkpoints = Checkpoints(run_dir / "checkpoints")
    history: list[dict] = []
    best_val, best_epoch, bad_epochs, start, stopped = math.inf, 0, 0, 0, False
    plateau = PlateauState.start(float(learning_rate(state.opt_state))) if config.plateau else None
    resumed_from = checkpoints.epoch("latest")
    if resumed_from is not None:
        state, stored = checkpoints.restore("latest", state, expect_model=model_id)
        history = stored["history"]
        best_val, best_epoch, bad_epochs = stored["best_val_loss"], stored["best_epoch"], stored["bad_epochs"]
        start, stopped = stored["epoch"], stored["stopped_early"]
        if config.plateau and stored.get("plateau"):
            plateau = PlateauState.from_json(stored["plateau"])
        write_history(run_dir / "history.csv", history)
    # (epoch, host state) and meta of a best epoch not yet written to `best`
    best_unsaved, best_meta = None, None
    if resumed_from is not None and best_epoch == resumed_from != checkpoints.stored_epoch("best"):
        best_unsaved, best_meta = (resumed_from, state), stored

    def meta(epoch: int) -> dict:
        return {
            "model": model_id, "epoch": epoch, "history": list(history), "best_val_loss": best_val,
            "best_epoch": best_epoch, "bad_epochs": bad_epochs, "stopped_early": stopped,
            "plateau": plateau.to_json() if plateau else None,
        }

    replicated = engine.replicate(state)
    first_seconds = None
    bar = tqdm(total=config.epochs, initial=start, desc=run_dir.name, unit="epoch",
               disable=not config.progress, dynamic_ncols=True)
    try:
        for epoch in range(start + 1, config.epochs + 1):
            if stopped:
                break
            lr = float(np.asarray(learning_rate(replicated.opt_state))[0])
            began = time.perf_counter()
            candidate, train_metrics = engine.train_epoch(replicated, train, epoch)
            val_metrics = engine.evaluate(candidate, val)
            seconds = time.perf_counter() - began
            first_seconds = seconds if first_seconds is None else first_seconds
            train_loss, val_loss = train_metrics["loss"], val_metrics["loss"]
            if not (math.isfinite(train_loss) and math.isfinite(val_loss)):
                if best_unsaved is not None:
                    checkpoints.save("best", best_unsaved[0], best_unsaved[1], best_meta)
                if epoch - 1 > max(checkpoints.epoch("latest") or 0, start):  # keep the last good epoch
                    checkpoints.save("latest", epoch - 1, engine.unreplicate(replicated), meta(epoch - 1))
                checkpoints.wait()
                kept = checkpoints.epoch("latest")
                raise TrainingDiverged(
                    f"{run_dir}: epoch {epoch}: loss is not finite (train {train_loss}, validation "
                    f"{val_loss}); training stopped"
                    + (f", last good checkpoint (epoch {kept}) kept" if kept else ", no checkpoint had been saved")
                    + "; try a lower --lr"
                )
            replicated = candidate
            row = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "lr": lr,
                   "epoch_seconds": seconds}
            row.update({f"val_{k}": v for k, v in val_metrics.items() if k != "loss"})
            history.append(row)
            improved = val_loss < best_val
            if improved:
                best_val, best_epoch, bad_epochs = val_loss, epoch, 0
            else:
                bad_epochs += 1
            if plateau is not None:
                plateau = plateau_update(plateau, val_loss, config.plateau)
                if float(plateau.lr) != lr:
                    replicated = with_learning_rate(replicated, float(plateau.lr))
            patience = config.early_stopping_patience
            stopped = patience is not None and bad_epochs >= patience
            last = epoch == config.epochs or stopped
            if improved:
                best_unsaved, best_meta = (epoch, engine.unreplicate(replicated)), meta(epoch)
            if last or epoch % config.checkpoint_every == 0:
                # a best epoch saved as `latest` is its own `best` until latest moves on
                if best_unsaved is not None and (last or best_unsaved[0] != epoch):
                    checkpoints.save("best", best_unsaved[0], best_unsaved[1], best_meta)
                    best_unsaved = None
                checkpoints.save("latest", epoch, engine.unreplicate(replicated), meta(epoch))
            write_history(run_dir / "history.csv", history)
            bar.set_postfix(train=f"{train_loss:.4f}", val=f"{val_loss:.4f}", lr=f"{lr:.2g}")
            bar.update(1)
    finally:
        bar.close()
        checkpoints.wait()
        checkpoints.close()
    result = FitResult(
        state=engine.unreplicate(replicated), history=history, best_epoch=best_epoch,
        best_val_loss=best_val, epochs_run=len(history), stopped_early=stopped,
        resumed_from=resumed_from, compile_seconds=None,
    )
    if first_seconds is not None and len(history) - (start) > 1:
        result.compile_seconds = max(0.0, first_seconds - result.median_epoch_seconds)
    return result
