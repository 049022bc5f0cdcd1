"""What a pipeline hands the engine: model, loss, inputs, optional augmentation, and the
measured choices of epoch driver and sweep mode per backend."""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping

import flax.linen as nn
import jax

Batch = Mapping[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class Task:
    """A supervised task for the engine.

    model: called as model.apply(vars, *[batch.get(k) for k in input_keys], train=...): an
      input key missing from a split's arrays is passed as None (e.g. no `length` when
      every sequence has the same length).
    loss: (outputs, batch) -> per-example loss (B,); the engine weights padding out.
    metrics: optional (outputs, batch) -> {name: per-example values (B,)}; reported as
      weighted means over a whole split (sums and counts, correct for a short last batch
      and across devices).
    summarize: optional {name: mean} -> {name: value}, applied on the host to the split's
      means (e.g. Pearson R from the means of p, t, p*p, t*t, p*t).
    train_kwargs: model keyword arguments filled from batch entries in training, e.g.
      {'example_ids': '_position'} (each example's place in the global batch: per-example
      dropout masks that do not depend on how many devices share a batch) or
      {'mask': '_weight'} (BatchNorm statistics without the padding of a short last batch).
    augment: optional (key, batch) -> batch, applied on device to training batches only.
      batch['_position'] (B,) holds each example's place in the global batch: derive
      per-example randomness from fold_in(key, position) and results do not depend on
      how many devices share the batch.
    drivers: the epoch driver per `jax.default_backend()` value ('cpu', 'gpu', 'tpu'):
      'scan' (a whole epoch is one jitted program) or 'loop' (a Python loop over the
      jitted step), chosen by measurement; the Engine's driver='auto' looks it up here.
    sweep_parallel: per backend, 'vmap' or 'sequential', whichever trained a sweep faster
      (molml_jax.train.sweep, parallel='auto').
    """

    model: nn.Module
    loss: Callable[[jax.Array, Batch], jax.Array]
    input_keys: tuple[str, ...] = ("x",)
    metrics: Callable[[jax.Array, Batch], dict] | None = None
    augment: Callable[[jax.Array, Batch], Batch] | None = None
    summarize: Callable[[dict], dict] | None = None
    train_kwargs: Mapping[str, str] = dataclasses.field(default_factory=dict)
    drivers: Mapping[str, str] = dataclasses.field(default_factory=lambda: {"cpu": "loop", "gpu": "scan", "tpu": "scan"})
    sweep_parallel: Mapping[str, str] = dataclasses.field(
        default_factory=lambda: {"cpu": "sequential", "gpu": "vmap", "tpu": "vmap"})

    def driver_for(self, backend: str) -> str:
        return self.drivers.get(backend, "loop")
