"""`fit`: one run's epochs (the shared loop in `epochs.py`) with its run-folder side:
checkpoints, resume, history.csv, the divergence error and a progress bar."""

from __future__ import annotations

import dataclasses
import statistics
from pathlib import Path

import jax

from molml_jax.errors import InputError, TrainingDiverged
from molml_jax.progress import progress_bar
from molml_jax.train.checkpoint import Checkpoints
from molml_jax.train.engine import DeviceData, Engine
from molml_jax.train.epochs import LoopConfig, Tracker, run_epochs
from molml_jax.train.run_folder import write_history
from molml_jax.train.state import TrainState, learning_rate


@dataclasses.dataclass(frozen=True)
class FitConfig(LoopConfig):
    """LoopConfig, plus: checkpoint_every: save `latest` (to resume) every N epochs, at the
    end, and before a divergence error; `best` is saved whenever the validation loss
    improves. Saves are asynchronous (orbax), overlapping the next epoch.
    progress: show a tqdm bar."""

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
    # every process saves and restores checkpoints (orbax coordinates them); one writes files
    primary = jax.process_index() == 0
    checkpoints = Checkpoints(run_dir / "checkpoints")
    history: list[dict] = []
    tracker = Tracker.start(float(learning_rate(state.opt_state)), config.plateau)
    start = resumed_from = checkpoints.epoch("latest")
    if resumed_from is not None:
        state, stored = checkpoints.restore("latest", state, expect_model=model_id)
        if "tracker" not in stored:
            raise InputError(f"{run_dir}: its checkpoint was written by an older molml-jax and cannot be "
                             f"resumed; use another --out")
        history, tracker = stored["history"], Tracker.from_json(stored["tracker"])
        if primary:
            write_history(run_dir / "history.csv", history)

    def save(kind: str, epoch: int, host_state, *, before_divergence: bool = False) -> None:
        record = tracker.to_json()
        if before_divergence:  # the tracker as it stood after `epoch`: divergence is all that changed
            record["diverged"] = [False] * len(record["diverged"])
        meta = {"model": model_id, "epoch": epoch, "tracker": record,
                "history": [row for row in history if row["epoch"] <= epoch]}
        checkpoints.save(kind, epoch, host_state, meta)

    replicated = engine.replicate(state)
    first_seconds = None
    bar = progress_bar(total=config.epochs, initial=start or 0, desc=run_dir.name, unit="epoch",
                       disable=not (config.progress and primary), dynamic_ncols=True)
    try:
        for result in run_epochs(engine, replicated, train, val, config, tracker, start=start or 0):
            epoch, row = result.epoch, result.rows[0]
            replicated = result.state
            if result.diverged[0]:
                if epoch - 1 > (checkpoints.epoch("latest") or 0):  # keep the last good epoch
                    save("latest", epoch - 1, engine.unreplicate(replicated), before_divergence=True)
                checkpoints.wait()
                kept = checkpoints.epoch("latest")
                raise TrainingDiverged(
                    f"{run_dir}: epoch {epoch}: loss is not finite (train {row['train_loss']}, validation "
                    f"{row['val_loss']}); training stopped"
                    + (f", last good checkpoint (epoch {kept}) kept" if kept else ", no checkpoint had been saved")
                    + "; try a lower --lr")
            first_seconds = result.seconds if first_seconds is None else first_seconds
            history.append(row)
            last = epoch == config.epochs or not tracker.active[0]
            host = None
            if result.improved[0]:
                host = engine.unreplicate(replicated)
                save("best", epoch, host)
            if last or epoch % config.checkpoint_every == 0:
                save("latest", epoch, host if host is not None else engine.unreplicate(replicated))
            if primary:
                write_history(run_dir / "history.csv", history)
            bar.set_postfix(train=f"{row['train_loss']:.4f}", val=f"{row['val_loss']:.4f}", lr=f"{row['lr']:.2g}")
            bar.update(1)
    finally:
        bar.close()
        checkpoints.wait()
        checkpoints.close()
    result = FitResult(
        state=engine.unreplicate(replicated), history=history, best_epoch=int(tracker.best_epoch[0]),
        best_val_loss=float(tracker.best_val_loss[0]), epochs_run=len(history),
        stopped_early=bool(tracker.stopped[0]), resumed_from=resumed_from, compile_seconds=None,
    )
    if first_seconds is not None and len(history) - (start or 0) > 1:
        result.compile_seconds = max(0.0, first_seconds - result.median_epoch_seconds)
    return result
