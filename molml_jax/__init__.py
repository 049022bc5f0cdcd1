"""molml-jax: JAX/Flax pipelines for molecular machine learning.

Three pipelines share one training engine (`molml_jax.train`):
DNA binding sites (`molml_jax.pipelines.dna`), nucleus segmentation and TF-binding profiles.
"""

__version__ = "0.1.0"
