"""2x2 max-pool with a hand-written gradient.

What: `max_pool_2x2(x (B, H, W, C))`, H and W even -> (B, H/2, W/2, C), torch
max_pool2d(x, 2) channels-last. The gradient goes to the first maximum of each 2x2 window
in row-major order, as torch's (and flax nn.max_pool's) does, so ties (common after ReLU)
are resolved alike.

Why: the gradient is computed with elementwise selects instead of XLA's select-and-scatter,
which is ~5x slower on CPU (docs/performance.md).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _max_pool_2x2(x):
    b, h, w, c = x.shape
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


@jax.custom_vjp
def max_pool_2x2(x):
    """torch max_pool2d(x, 2) channels-last: x (B, H, W, C), H and W even -> (B, H/2, W/2, C);
    gradient to the first maximum of each window (see the module docstring)."""
    return _max_pool_2x2(x)


def _max_pool_2x2_fwd(x):
    return _max_pool_2x2(x), x


def _max_pool_2x2_bwd(x, g):
    b, h, w, c = x.shape
    v = x.reshape(b, h // 2, 2, w // 2, 2, c)
    top_left, top_right, bottom_left, bottom_right = v[:, :, 0, :, 0], v[:, :, 0, :, 1], v[:, :, 1, :, 0], v[:, :, 1, :, 1]
    m = jnp.maximum(jnp.maximum(top_left, top_right), jnp.maximum(bottom_left, bottom_right))
    # index (0..3, row-major) of the first maximum in each window
    first = jnp.where(top_left == m, 0, jnp.where(top_right == m, 1, jnp.where(bottom_left == m, 2, 3)))
    position = (2 * jnp.arange(2).reshape(2, 1) + jnp.arange(2)).reshape(1, 1, 2, 1, 2, 1)
    dx = jnp.where(position == first[:, :, None, :, None, :], g[:, :, None, :, None, :], 0.0)
    return (dx.reshape(b, h, w, c).astype(x.dtype),)


max_pool_2x2.defvjp(_max_pool_2x2_fwd, _max_pool_2x2_bwd)
