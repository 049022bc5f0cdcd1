"""Evaluation metrics, one module per kind of task (segmentation.py: Dice loss, Dice and
IoU, connected components, the DSB 2018 mean average precision, instance precision, recall,
F1 and panoptic quality), computed on host numpy arrays after a model has made its
predictions; the few meant for a jitted step (such as `segmentation.dice_loss_jax`) say so.
They live apart from `molml_jax.train` because the pipelines, the benchmarks and the
PyTorch reference runs all score their outputs with the same functions."""

from molml_jax.metrics.segmentation import instance_counts, instance_metrics

__all__ = ["instance_counts", "instance_metrics"]
