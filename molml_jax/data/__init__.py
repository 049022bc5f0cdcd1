"""Files -> numpy arrays: parsers, one-hot encoding, splits, bundled data. (On-device
augmentation, which uses JAX, is `molml_jax.data.augment`.)"""

from molml_jax.data.dna import (
    SequenceRecords,
    default_dna_csv,
    one_hot,
    read_fasta,
    read_labeled_csv,
    read_sequences,
)
from molml_jax.data.images import (
    ImageFile,
    ImagePairs,
    crop_to,
    default_cells_tarball,
    list_images,
    pad_to_multiple,
    read_image_pairs,
    read_images_for_prediction,
    read_pairs_table,
    write_mask_png,
)
from molml_jax.data.intensity import NORMALIZATIONS, normalization, normalize, pixel_kind
from molml_jax.data.splits import split_indices
from molml_jax.data.tf_binding import (
    Motif,
    PlantedSite,
    TFBindingData,
    iter_simulated_tf_binding,
    load_motifs,
    read_tf_binding,
    scan_motifs,
    simulate_tf_binding,
    write_tf_binding,
    write_tf_binding_chunks,
)

__all__ = [
    "SequenceRecords",
    "default_dna_csv",
    "one_hot",
    "read_fasta",
    "read_labeled_csv",
    "read_sequences",
    "split_indices",
    "ImageFile",
    "ImagePairs",
    "crop_to",
    "default_cells_tarball",
    "list_images",
    "pad_to_multiple",
    "read_image_pairs",
    "read_images_for_prediction",
    "read_pairs_table",
    "write_mask_png",
    "NORMALIZATIONS",
    "normalization",
    "normalize",
    "pixel_kind",
    "Motif",
    "PlantedSite",
    "TFBindingData",
    "iter_simulated_tf_binding",
    "load_motifs",
    "read_tf_binding",
    "scan_motifs",
    "simulate_tf_binding",
    "write_tf_binding",
    "write_tf_binding_chunks",
]
