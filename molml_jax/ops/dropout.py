"""Inverted dropout with 16-bit random draws.

What: `dropout16(key, x, rate, example_ids=None)` -> x * keep / (1 - rate), same shape and
dtype as x, keep ~ Bernoulli(1 - rate); x itself for rate 0, zeros for rate >= 1.
example_ids (B,) int: example b's mask is drawn from fold_in(key, example_ids[b]), so it
does not depend on the batch the example shares (or on how the batch is split over
devices). The flax module is `models.cnn.Dropout16`.

Why: each 32-bit random word gives two 16-bit draws (keep = draw < round((1 - rate) *
65536)), where flax's nn.Dropout spends one word per element: the generator (threefry) is
most of dropout's cost on XLA:CPU (docs/performance.md). The keep probability is exact to
1/65536 (rate 0.2: 0.8000031).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def dropout16(key, x, rate: float, example_ids=None):
    """Dropout of x (any shape; (B, ...) with example_ids (B,)) with the random key `key`."""
    if rate == 0.0:
        return x
    if rate >= 1.0:
        return jnp.zeros_like(x)
    if example_ids is None:
        size = x.size
        words = jax.random.bits(key, ((size + 1) // 2,), jnp.uint32)
        draws = jnp.concatenate([words & 0xFFFF, words >> 16])[:size].reshape(x.shape)
    else:
        size = x[0].size
        keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, example_ids)
        words = jax.vmap(lambda k: jax.random.bits(k, ((size + 1) // 2,), jnp.uint32))(keys)
        draws = jnp.concatenate([words & 0xFFFF, words >> 16], axis=1)[:, :size].reshape(x.shape)
    keep = draws < jnp.uint32(round((1.0 - rate) * 65536))
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros((), x.dtype))
