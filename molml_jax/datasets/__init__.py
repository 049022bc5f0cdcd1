"""Prepared datasets: TFDS (ArrayRecord) datasets of the pipelines' splits, without TensorFlow.

Write one with `python -m experiments.<pipeline> prepare --out DATA_DIR [data flags]`
(or `write_prepared`), train from it with `train --data DATA_DIR`. In a notebook, without
molml_jax and without TensorFlow:

    import tensorflow_datasets as tfds
    src = tfds.builder_from_directory("DATA_DIR/molml_dna/1.0.0").as_data_source()
    src["train"][0]                          # {'x': uint8 (L, 4), 'length', 'label', 'name': bytes}
    src["validation"].__getitems__([0, 5])   # many records at once
    tfds.data_source("molml_dna", data_dir="DATA_DIR", split="train")   # also works

or with molml_jax: `open_prepared(DATA_DIR, "dna").read("train", np.arange(8))`.
`tfds.load` / `as_dataset` need TensorFlow and are not supported.
"""

from molml_jax.datasets.base import ArrayReader, is_prepared
from molml_jax.errors import require

# everything else on first use: those modules import tensorflow_datasets, which a machine
# that only trains from files (e.g. an accelerator image) may not have
_LAZY = {
    "builders": ("BUILDERS", "DATASET_NAMES", "PARTS", "VERSION", "MolmlDna", "MolmlSegmentation", "MolmlTfBinding"),
    "prepared": ("FORMAT_VERSION", "check_target", "LazyColumn", "Prepared", "PreparedReader",
                 "data_settings", "describe", "open_for_config", "open_prepared", "sha256_file",
                 "source_checksums", "write_prepared"),
}


def __getattr__(name: str):
    module = next((m for m, names in _LAZY.items() if name in names), None)
    if module is None:
        raise AttributeError(f"module 'molml_jax.datasets' has no attribute {name!r}")
    return getattr(require(f"molml_jax.datasets.{module}", "data", "prepared datasets"), name)


__all__ = [
    "BUILDERS", "DATASET_NAMES", "FORMAT_VERSION", "PARTS", "VERSION", "ArrayReader", "LazyColumn", "check_target",
    "MolmlDna", "MolmlSegmentation", "MolmlTfBinding", "Prepared", "PreparedReader", "data_settings",
    "describe", "is_prepared", "open_for_config", "open_prepared", "sha256_file", "source_checksums", "write_prepared",
]
