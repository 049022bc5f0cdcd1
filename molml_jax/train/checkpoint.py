"""Orbax checkpoints of a run: `latest` (to resume) and `best` (lowest validation loss).

Both hold the whole train state as one host copy (numpy, no device axis), so a run saved
on two devices restores on one, plus a JSON `meta` record (epoch, history, schedule state,
model description). Never pickle.

When the latest epoch is also the best one (meta best_epoch == its epoch), `fit` writes it
once, as `latest`, and writes the separate `best` copy only when a later epoch moves
`latest` on (or at the end): a save costs ~80 ms of CPU, 4% of a 2 s epoch on 2 cores.
Reading `best` therefore reads `latest` whenever `latest` is the newer best.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from molml_jax.errors import InputError

KINDS = ("latest", "best")


def _options() -> ocp.CheckpointManagerOptions:
    return ocp.CheckpointManagerOptions(max_to_keep=1, create=True)


class Checkpoints:
    """checkpoints/latest and checkpoints/best under a run folder; step = epoch number."""

    def __init__(self, directory: str | Path, *, create: bool = True):
        self.directory = Path(directory).resolve()
        if not create and not self.directory.is_dir():
            raise InputError(f"{self.directory}: no checkpoints folder (is this a run folder?)")
        self._managers = {
            kind: ocp.CheckpointManager(self.directory / kind, options=_options()) for kind in KINDS
        }

    def stored_epoch(self, kind: str) -> int | None:
        """The epoch of the checkpoint stored under this kind's own folder, or None."""
        return self._managers[kind].latest_step()

    def _source(self, kind: str) -> str:
        """Where `kind` is read from: `best` comes from `latest` when that is the newer best."""
        if kind == "best":
            latest = self.stored_epoch("latest")
            if latest is not None and latest != self.stored_epoch("best"):
                if self._read_meta("latest", latest).get("best_epoch") == latest:
                    return "latest"
        return kind

    def epoch(self, kind: str) -> int | None:
        """The epoch of the checkpoint of this kind, or None."""
        return self.stored_epoch(self._source(kind))

    def save(self, kind: str, epoch: int, state: Any, meta: dict) -> None:
        """Save a host state (numpy pytree) and a JSON-able meta dict (asynchronously)."""
        self._managers[kind].save(
            epoch,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
        )

    def _read_meta(self, source: str, epoch: int) -> dict:
        return self._managers[source].restore(epoch, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def read_meta(self, kind: str) -> dict:
        source = self._source(kind)
        return self._read_meta(source, self._require(source))

    def restore(self, kind: str, target: Any, *, expect_model: str | None = None) -> tuple[Any, dict]:
        """Restore into the structure of `target` (a host state of the right model).

        `expect_model` (meta['model'] of the run that wrote it) is checked first, so a
        checkpoint of another model is one clear InputError instead of an orbax trace.
        """
        source = self._source(kind)
        epoch = self._require(source)
        meta = self._read_meta(source, epoch)
        where = self.directory / source / str(epoch)
        if expect_model is not None and meta.get("model") != expect_model:
            raise InputError(
                f"{where}: checkpoint holds {meta.get('model', 'an unknown model')}, not {expect_model}"
            )
        abstract = jax.tree.map(lambda x: np.zeros(np.shape(x), np.asarray(x).dtype), target)
        try:
            restored = self._managers[source].restore(
                epoch, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
            )["state"]
        except (ValueError, KeyError, TypeError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise InputError(f"{where}: checkpoint does not fit this model ({first})") from None
        return restored, meta

    def _require(self, kind: str) -> int:
        epoch = self.stored_epoch(kind)
        if epoch is None:
            raise InputError(f"{self.directory / kind}: no checkpoint saved")
        return epoch

    def wait(self) -> None:
        for manager in self._managers.values():
            manager.wait_until_finished()

    def close(self) -> None:
        for manager in self._managers.values():
            manager.close()
