"""Attributions of a DNA model's output to its input bases (`attributions.py`): saliency,
input x gradient, integrated gradients and in-silico mutagenesis, on one-hot (N, L, 4)
arrays and a scalar function of a batch; and `reverse_complement`."""

from molml_jax.interpret.attributions import (
    BASELINES, METHODS, attribute, in_silico_mutagenesis, input_x_gradient, integrated_gradients,
    make_baseline, reverse_complement, saliency,
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
