"""TFDS builders of the three pipelines' prepared datasets (ArrayRecord, no TensorFlow).

One builder per pipeline, dataset names `molml_dna`, `molml_tf_binding`,
`molml_segmentation`, version 1.0.0. Records keep the order of the pipeline's split
(`disable_shuffling`); splits `train`, `validation`, `test` (tf_binding: no test).

Features of one record (L: sequence or window length, H x W: image size; the exact values
are in the dataset's metadata.json, key `shapes`):
  molml_dna:          x uint8 (L, 4) one-hot A, C, G, T (zero rows: N, or padding past
                      `length`), length int32, label ClassLabel(2), name Text
  molml_tf_binding:   x uint8 (L, 4) one-hot, y float32 (L,) score per base, name Text
  molml_segmentation: image float32 (H, W), mask float32 (H, W) (zlib), name Text
The pipelines' float32 arrays are these values cast back, bit for bit.

The builders only write when handed the examples by `write_prepared` (`examples=`);
reading needs no builder class at all (see `molml_jax.datasets`).
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core import utils as tfds_utils

VERSION = "1.0.0"
# pipeline split name <-> TFDS split name, in the order the records are concatenated
PARTS = {"train": "train", "val": "validation", "test": "test"}
CHUNK = 1024  # at most this many examples converted at once while writing
CHUNK_BYTES = 32 << 20  # and about this many bytes (256x256 float32 pairs: 64 per chunk)


@dataclasses.dataclass(frozen=True)
class Examples:
    """What a builder writes: columns over all N examples (each indexable by an int index
    array, e.g. numpy arrays; names as an object array) and the pipeline's split (part ->
    indices into the columns, in the order to store)."""

    columns: Mapping[str, object]
    split: Mapping[str, np.ndarray]


class _Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Common part: features from FEATURES, examples from `examples=` in chunks."""

    VERSION = tfds.core.Version(VERSION)
    RELEASE_NOTES = {str(VERSION): "First prepared format: the split of the pipeline's load_data, in order."}
    disable_shuffling = True  # records keep the order of the pipeline's split
    PIPELINE = ""
    DESCRIPTION = ""
    FEATURES: dict = {}
    DTYPES: dict = {}  # feature -> numpy dtype of its values (str: text)
    # feature -> how a record holds it, for molml_jax.datasets' own decoder (TFDS's decodes
    # record by record in Python, ~2.5x slower): raw 'bytes' of the array, 'zlib'-compressed
    # bytes, an 'int' (int64 list of one), 'text' (UTF-8 bytes)
    STORED: dict = {}

    @tfds_utils.classproperty
    @classmethod
    def code_path(cls):
        # No checksums file or downloads beside the code. tfds 4.9.10 looks for them through
        # `importlib_resources`, which Python >= 3.9 installs do not have (ModuleNotFoundError).
        return None

    def __init__(self, *, examples: Examples | None = None, **kwargs):
        self._examples = examples  # optional: a required argument would break tfds.data_source
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self, description=self.DESCRIPTION,
            features=tfds.features.FeaturesDict({k: make() for k, make in self.FEATURES.items()}),
            metadata=tfds.core.MetadataDict(), disable_shuffling=self.disable_shuffling)

    def _split_generators(self, dl_manager):
        if self._examples is None:
            raise RuntimeError(f"{self.name}: write it with molml_jax.datasets.write_prepared "
                               f"(or `python -m experiments.{self.PIPELINE} prepare`)")
        return {PARTS[part]: self._generate_examples(part) for part in PARTS if part in self._examples.split}

    def _generate_examples(self, part: str):
        columns, index = self._examples.columns, np.asarray(self._examples.split[part])
        size = _chunk_size(columns)
        for start in range(0, len(index), size):
            chunk = index[start:start + size]
            batch = {key: encode_column(key, columns[key][chunk], self.DTYPES[key]) for key in self.DTYPES}
            for j in range(len(chunk)):
                yield start + j, {key: value[j] for key, value in batch.items()}


def _chunk_size(columns: Mapping[str, object]) -> int:
    """Examples per chunk: CHUNK, fewer for large examples (the copy stays ~CHUNK_BYTES)."""
    per_example = sum(int(np.prod(np.shape(c)[1:])) * 4 for c in columns.values() if len(np.shape(c)) > 1)
    return max(1, min(CHUNK, CHUNK_BYTES // max(per_example, 1)))


def encode_column(key: str, values, dtype) -> np.ndarray:
    """values cast to the stored dtype; integer storage must hold them exactly (one-hot)."""
    if dtype is str:
        return np.asarray(values, dtype=object)
    values = np.asarray(values)
    stored = values.astype(dtype)
    if np.issubdtype(dtype, np.integer) and not np.array_equal(stored, values):
        raise ValueError(f"{key}: values are not exactly representable as {np.dtype(dtype).name}")
    return stored


def _tensor(shape: Sequence, dtype, encoding: str = "none"):
    return lambda: tfds.features.Tensor(shape=tuple(shape), dtype=dtype, encoding=encoding)


class MolmlDna(_Builder):
    """molml_dna: labeled DNA sequences of the dna pipeline."""

    PIPELINE = "dna"
    DESCRIPTION = ("DNA binding sites (molml-jax dna pipeline). Per record: x uint8 (L, 4) one-hot A, C, G, T "
                   "(zero rows for N and for padding past `length`), length int32, label 0/1, name. "
                   "L and the settings are in the metadata.")
    FEATURES = {"x": _tensor((None, 4), np.uint8, "bytes"), "length": lambda: tfds.features.Scalar(dtype=np.int32),
                "label": lambda: tfds.features.ClassLabel(num_classes=2), "name": tfds.features.Text}
    DTYPES = {"x": np.uint8, "length": np.int32, "label": np.int64, "name": str}
    STORED = {"x": "bytes", "length": "int", "label": "int", "name": "text"}


class MolmlTfBinding(_Builder):
    """molml_tf_binding: windows and per-base scores of the tf_binding pipeline."""

    PIPELINE = "tf_binding"
    DESCRIPTION = ("TF-binding profiles (molml-jax tf_binding pipeline). Per record: x uint8 (L, 4) one-hot "
                   "A, C, G, T, y float32 (L,) motif score per base, name (window name). No test split.")
    FEATURES = {"x": _tensor((None, 4), np.uint8, "bytes"), "y": _tensor((None,), np.float32, "bytes"),
                "name": tfds.features.Text}
    DTYPES = {"x": np.uint8, "y": np.float32, "name": str}
    STORED = {"x": "bytes", "y": "bytes", "name": "text"}


class MolmlSegmentation(_Builder):
    """molml_segmentation: grey image / mask pairs of the segmentation pipeline."""

    PIPELINE = "segmentation"
    DESCRIPTION = ("Nucleus segmentation pairs (molml-jax segmentation pipeline). Per record: image float32 "
                   "(H, W) and mask float32 (H, W) in [0, 1] exactly as the pipeline reads them (zlib), name.")
    FEATURES = {"image": _tensor((None, None), np.float32, "zlib"), "mask": _tensor((None, None), np.float32, "zlib"),
                "name": tfds.features.Text}
    DTYPES = {"image": np.float32, "mask": np.float32, "name": str}
    STORED = {"image": "zlib", "mask": "zlib", "name": "text"}


BUILDERS = {b.PIPELINE: b for b in (MolmlDna, MolmlTfBinding, MolmlSegmentation)}
DATASET_NAMES = {pipeline: builder.name for pipeline, builder in BUILDERS.items()}
