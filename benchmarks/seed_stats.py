"""What many seeds say: the spread of a metric per framework, whether two frameworks' runs
come from the same distribution (two-sided Mann-Whitney U), and which runs left the loss
plateau of a constant prediction."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

# Binary cross entropy of a constant 0.5 prediction: where a BiLSTM run sits until it learns.
CHANCE_LOSS = math.log(2.0)
LEFT_PLATEAU_BELOW = 0.6  # a validation loss under this has clearly left ln 2 = 0.693


def spread(values: Sequence[float]) -> dict:
    """{'n', 'mean', 'sd' (sample, 0 for one value), 'min', 'max', 'median'} of the values."""
    v = np.asarray(values, np.float64)
    if v.size == 0:
        raise ValueError("no values")
    return {"n": int(v.size), "mean": float(v.mean()), "sd": float(v.std(ddof=1)) if v.size > 1 else 0.0,
            "min": float(v.min()), "max": float(v.max()), "median": float(np.median(v))}


def mann_whitney_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided Mann-Whitney U p-value for 'a and b come from the same distribution' (exact
    for small samples without ties, scipy's choice); 1.0 when every value is equal."""
    from scipy.stats import mannwhitneyu

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if np.ptp(np.concatenate([a, b])) == 0:
        return 1.0
    return float(mannwhitneyu(a, b, alternative="two-sided").pvalue)


def left_plateau_epoch(history: Sequence[dict], below: float = LEFT_PLATEAU_BELOW) -> int | None:
    """The first epoch whose validation loss is under `below`, or None if the run never got there."""
    return next((row["epoch"] for row in history if row["val_loss"] < below), None)


def compare(metric: str, a: Sequence[float], b: Sequence[float]) -> dict:
    """Spread of each and the p-value: {'metric', 'jax': spread, 'torch': spread, 'p_value'}."""
    return {"metric": metric, "jax": spread(a), "torch": spread(b), "p_value": mann_whitney_p(a, b)}


def comparison_lines(result: dict, digits: int = 4) -> list[str]:
    """Markdown table rows (| metric | JAX | PyTorch |) of a compare() result, with its p-value."""
    fmt = lambda s: (f"{s['mean']:.{digits}f} ± {s['sd']:.{digits}f} "
                     f"(min {s['min']:.{digits}f}, max {s['max']:.{digits}f})")
    name = result["metric"]
    return [f"| {name}: mean ± sd (min, max) over {result['jax']['n']} / {result['torch']['n']} seeds | "
            f"{fmt(result['jax'])} | {fmt(result['torch'])} |",
            f"| {name}: two-sided Mann-Whitney U p-value (same distribution?) | {result['p_value']:.3g} | |"]
