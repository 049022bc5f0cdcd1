"""What a trained DNA model says about sequences: attributions of its output to the input
bases (`attributions.py`: saliency, input x gradient, integrated gradients, in-silico
mutagenesis, on one-hot (N, L, 4) arrays and a scalar function of a batch), and genomic
input (`genome.py`, `variants.py`, `intervals.py`: reference windows, variant effects, BED
intervals). `reverse_complement` is molml_jax.data.strands'."""

from molml_jax.data.strands import reverse_complement
from molml_jax.interpret.attributions import (
    BASELINES, METHODS, attribute, in_silico_mutagenesis, input_x_gradient, integrated_gradients,
    make_baseline, saliency,
)

__all__ = [
    "BASELINES",
    "METHODS",
    "attribute",
    "in_silico_mutagenesis",
    "input_x_gradient",
    "integrated_gradients",
    "make_baseline",
    "reverse_complement",
    "saliency",
]
