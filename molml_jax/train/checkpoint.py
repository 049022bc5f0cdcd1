"""Orbax checkpoints of a run: `latest` (to resume) and `best` (lowest validation loss).

Each holds the whole train state as one host copy (numpy, no device axis), so a run saved
on two devices restores on one, plus a JSON `meta` record (epoch, history, tracker state,
model description). Saves are asynchronous: the write overlaps the next epoch. Never pickle.
With several processes (jax.distributed) every process calls save and restore; orbax has
process 0 write the host arrays and synchronises the others.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from molml_jax.errors import InputError

KINDS = ("latest", "best")


class Checkpoints:
    """checkpoints/latest and checkpoints/best under a run folder; step = epoch number."""

    def __init__(self, directory: str | Path, *, create: bool = True):
        self.directory = Path(directory).resolve()
        if not create and not self.directory.is_dir():
            raise InputError(f"{self.directory}: no checkpoints folder (is this a run folder?)")
        # one barrier namespace per kind: with several processes, orbax names its barriers by
        # step, and `best` and `latest` saved at the same epoch would otherwise share them
        options = lambda kind: ocp.CheckpointManagerOptions(
            max_to_keep=1, create=True,
            multiprocessing_options=ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=kind))
        self._managers = {kind: ocp.CheckpointManager(self.directory / kind, options=options(kind)) for kind in KINDS}

    def epoch(self, kind: str) -> int | None:
        """The epoch of the checkpoint of this kind, or None."""
        return self._managers[kind].latest_step()

    def save(self, kind: str, epoch: int, state: Any, meta: dict) -> None:
        """Save a host state (numpy pytree) and a JSON-able meta dict (asynchronously)."""
        self._managers[kind].save(
            epoch,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
        )

    def restore(self, kind: str, target: Any, *, expect_model: str | None = None) -> tuple[Any, dict]:
        """Restore into the structure of `target` (a state of the right model, or its shapes:
        train.state.train_state_shapes).

        `expect_model` (meta['model'] of the run that wrote it) is checked first, so a
        checkpoint of another model is one clear InputError instead of an orbax trace.
        """
        manager = self._managers[kind]
        epoch = manager.latest_step()
        if epoch is None:
            raise InputError(f"{self.directory / kind}: no checkpoint saved")
        where = self.directory / kind / str(epoch)
        meta = manager.restore(epoch, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        if expect_model is not None and meta.get("model") != expect_model:
            raise InputError(f"{where}: checkpoint holds {meta.get('model', 'an unknown model')}, not {expect_model}")
        abstract = jax.tree.map(lambda x: np.zeros(np.shape(x), x.dtype), target)  # arrays or ShapeDtypeStructs
        try:
            restored = manager.restore(epoch, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))["state"]
        except (ValueError, KeyError, TypeError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise InputError(f"{where}: checkpoint does not fit this model ({first})") from None
        return restored, meta

    def wait(self) -> None:
        for manager in self._managers.values():
            manager.wait_until_finished()

    def close(self) -> None:
        for manager in self._managers.values():
            manager.close()
