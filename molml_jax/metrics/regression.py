"""Pearson R over all positions of a split, accumulated as per-example moment sums so that
the engine can sum them over batches and devices (jnp in the step, numpy on the host)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def moment_sums(pred, target) -> dict:
    """pred, target (B, L) -> per-example sums over L of 1, p, t, p², t², p·t, each (B,)."""
    p, t = pred, target
    return {"bases": jnp.full(p.shape[:1], p.shape[1], p.dtype), "p": p.sum(-1), "t": t.sum(-1),
            "pp": (p * p).sum(-1), "tt": (t * t).sum(-1), "pt": (p * t).sum(-1)}


def pearson_from_moments(m: dict) -> dict:
    """{'pearson': R} over all positions from the means of `moment_sums` (floats or (K,)
    arrays, one per configuration of a sweep); 0 where a variance is 0."""
    e = {k: np.asarray(m[k], np.float64) / np.asarray(m["bases"], np.float64) for k in ("p", "t", "pp", "tt", "pt")}
    cov = e["pt"] - e["p"] * e["t"]
    var = (e["pp"] - e["p"] ** 2) * (e["tt"] - e["t"] ** 2)
    return {"pearson": np.where(var > 0, cov / np.sqrt(np.maximum(var, 1e-300)), 0.0)}


def pearson(pred, target) -> float:
    """Pearson R over all elements of two arrays of the same shape (host, float64)."""
    p, t = np.asarray(pred, np.float64).ravel(), np.asarray(target, np.float64).ravel()
    p, t = p - p.mean(), t - t.mean()
    denominator = np.sqrt((p * p).sum() * (t * t).sum())
    return float((p * t).sum() / denominator) if denominator > 0 else 0.0
