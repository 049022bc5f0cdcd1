"""Evaluation metrics, one module per kind of task (segmentation.py: Dice loss, Dice and
IoU, connected components, the DSB 2018 mean average precision), computed on host numpy
arrays after a model has made its predictions; the few meant for a jitted step (such as
`segmentation.dice_loss_jax`) say so. They live apart from `molml_jax.train` because the
pipelines, the benchmarks and the PyTorch reference runs all score their outputs with the
same functions."""
