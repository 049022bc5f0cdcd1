"""What needs neither tensorflow_datasets nor grain, so that the pipelines run from files
on a machine without them (e.g. an accelerator image): whether a folder is a prepared
dataset (DATA_DIR/molml_<pipeline>/<version>/dataset_info.json), and the reader of
in-memory arrays."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np


def _version_dir(path: Path) -> Path | None:
    """The version folder of a prepared dataset at `path` (DATA_DIR or the folder itself)."""
    if (path / "dataset_info.json").is_file():
        return path
    found = sorted(path.glob("molml_*/*/dataset_info.json")) if path.is_dir() else []
    return found[0].parent if found else None


def is_prepared(path) -> bool:
    """Whether `path` is a prepared dataset: a DATA_DIR, or its molml_<pipeline>/<version> folder."""
    if path is None:
        return False
    return _version_dir(Path(path)) is not None


class ArrayReader:
    """Random access to in-memory batch arrays: `.n` examples, `.read(indices)` ->
    {key: array[indices]} (the same dict a prepared dataset's reader gives)."""

    def __init__(self, arrays: Mapping[str, np.ndarray]):
        self.arrays = dict(arrays)
        self.n = len(next(iter(self.arrays.values()))) if self.arrays else 0

    def read(self, indices) -> dict[str, np.ndarray]:
        indices = np.asarray(indices, dtype=np.int64)
        return {k: v[indices] for k, v in self.arrays.items()}
