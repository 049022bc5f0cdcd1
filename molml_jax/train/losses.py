"""Per-example losses: (outputs, targets) -> (B,). The engine weights and sums them."""

from __future__ import annotations

import jax.numpy as jnp
import optax


def binary_cross_entropy_with_logits(logits: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
    """logits (B,), labels (B,) in {0, 1} -> (B,). Equals torch binary_cross_entropy on
    sigmoid(logits), computed stably from the logit (torch clamps log at -100 instead)."""
    return optax.sigmoid_binary_cross_entropy(logits, labels.astype(logits.dtype))


def mean_squared_error(predictions: jnp.ndarray, targets: jnp.ndarray) -> jnp.ndarray:
    """(B, ...) -> (B,): mean over all but the batch axis."""
    err = jnp.square(predictions - targets)
    return err.reshape(err.shape[0], -1).mean(axis=1)
