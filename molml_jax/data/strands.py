"""The other strand of one-hot DNA: reverse complement, on the host or the device (jittable).

One-hot rows are in A, C, G, T order, so the complement of a row is the row read backwards
(A<->T, C<->G) and the reverse complement of a sequence is x[..., ::-1, ::-1]. Sequences
zero-padded at the end to a common length (with their real `lengths`) stay padded at the
end: only the first `length` positions are reversed.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np


def _positions_backwards(length: int, lengths) -> tuple:
    """For each sequence, where position i of the reversed sequence reads from (B, L) and
    whether it is a real position (B, L)."""
    xp = jnp if isinstance(lengths, jax.Array) else np
    lengths = xp.asarray(lengths).reshape(-1, 1)
    source = lengths - 1 - xp.arange(length)[None, :]
    return xp.maximum(source, 0), source >= 0


def reverse_profile(y, lengths=None):
    """Per-position values (B, L) or (B, L, C) of the forward strand, in the order of the
    reverse strand: y[:, ::-1] (only the first lengths[b] positions, padding kept at the end)."""
    if lengths is None:
        return y[:, ::-1]
    xp = jnp if isinstance(y, jax.Array) or isinstance(lengths, jax.Array) else np
    index, real = _positions_backwards(y.shape[1], lengths)
    extra = (1,) * (y.ndim - 2)
    flipped = xp.take_along_axis(y, index.reshape(index.shape + extra), axis=1)
    return xp.where(real.reshape(real.shape + extra), flipped, xp.zeros((), y.dtype))


def reverse_complement(x, lengths=None):
    """One-hot sequences (B, L, 4) (or one (L, 4)) -> their reverse complements, same shape.
    lengths: (B,) real lengths when zero-padded at the end (None: all L). numpy in, numpy out;
    jax in, jax out."""
    if x.ndim == 2:
        return reverse_complement(x[None], None if lengths is None else [lengths])[0]
    return reverse_profile(x, lengths)[..., ::-1]


def random_reverse_complement(
    key: jax.Array,
    batch: Mapping[str, jax.Array],
    probability: float = 0.5,
    *,
    profile_keys: Sequence[str] = (),
) -> Mapping[str, jax.Array]:
    """Reverse-complement each training sequence with `probability` (a Task.augment).

    batch: 'x' (B, L, 4) one-hot, optional 'length' (B,) and '_position' (B,) (each
    example's place in the global batch: the coin of an example is
    bernoulli(fold_in(key, position)), so it does not depend on how many devices share the
    batch). profile_keys: per-base targets (B, L) turned with their sequence (the TF-binding
    score profile). Other keys pass through. probability 0 returns `batch` itself.
    """
    if float(probability) == 0.0:
        return batch
    x = batch["x"]
    positions = batch["_position"] if "_position" in batch else jnp.arange(x.shape[0])
    flip = jax.vmap(lambda p: jax.random.bernoulli(jax.random.fold_in(key, p), probability))(positions)
    lengths = batch.get("length")
    out = dict(batch)
    out["x"] = jnp.where(flip[:, None, None], reverse_complement(x, lengths), x)
    for name in profile_keys:
        y = batch[name]
        turned = reverse_profile(y, lengths)
        out[name] = jnp.where(flip.reshape((-1,) + (1,) * (y.ndim - 1)), turned, y)
    return out
