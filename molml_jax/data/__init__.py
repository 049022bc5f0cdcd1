"""Files -> numpy arrays (no JAX here): parsers, one-hot encoding, splits, bundled data."""

from molml_jax.data.dna import (
    SequenceRecords,
    default_dna_csv,
    one_hot,
    read_fasta,
    read_labeled_csv,
    read_sequences,
)
from molml_jax.data.splits import split_indices

__all__ = [
    "SequenceRecords",
    "default_dna_csv",
    "one_hot",
    "read_fasta",
    "read_labeled_csv",
    "read_sequences",
    "split_indices",
]
