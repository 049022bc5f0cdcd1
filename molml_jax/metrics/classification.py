"""Binary classification: probabilities from logits and ROC AUC (host numpy)."""

from __future__ import annotations

import numpy as np


def sigmoid(logits) -> np.ndarray:
    """Probabilities of logits of any shape, computed in float64 (no overflow warnings)."""
    z = np.asarray(logits, np.float64)
    return np.exp(-np.logaddexp(0.0, -z))


def roc_auc(labels, scores) -> float | None:
    """ROC AUC of scores (N,) against 0/1 labels (N,); None when only one class is present."""
    from sklearn.metrics import roc_auc_score  # imported here: 1.3 s that a CLI's --help should not wait for

    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        return None
    return float(roc_auc_score(labels, np.asarray(scores, np.float64)))
