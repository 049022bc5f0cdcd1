"""Deterministic train / validation / test splits from a seed."""

from __future__ import annotations

import numpy as np


def split_indices(
    n: int, *, seed: int, test_fraction: float = 0.2, val_fraction: float = 0.1
) -> dict[str, np.ndarray]:
    """Shuffle range(n) with `seed`, then cut test first and validation from the rest.

    test: round(test_fraction * n) examples; val: round(val_fraction * (n - n_test)), i.e.
    `val_fraction` is a fraction of the training part, as in the course's "80/20, then 10%
    of train as validation". Returns int64 index arrays 'train', 'val', 'test'.
    """
    if not 0 < test_fraction < 1 or not 0 <= val_fraction < 1:
        raise ValueError(f"fractions must lie in (0, 1): test {test_fraction}, val {val_fraction}")
    perm = np.random.default_rng(seed).permutation(n)
    n_test = int(round(test_fraction * n))
    n_val = int(round(val_fraction * (n - n_test)))
    if n - n_test - n_val < 1 or n_test < 1:
        raise ValueError(f"{n} examples are too few to split {test_fraction} test / {val_fraction} val")
    return {
        "test": perm[:n_test],
        "val": perm[n_test : n_test + n_val],
        "train": perm[n_test + n_val :],
    }
