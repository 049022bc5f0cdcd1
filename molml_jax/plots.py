"""Figures written into run folders (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_loss_curves(history: Sequence[dict], path: str | Path, *, title: str = "") -> None:
    """Train and validation loss per epoch on one axis, as the problem set's figure."""
    epochs = [row["epoch"] for row in history]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, [row["train_loss"] for row in history], label="train")
    ax.plot(epochs, [row["val_loss"] for row in history], label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    if title:
        ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_curve_comparison(curves: dict[str, Sequence[dict]], path: str | Path, *, title: str = "") -> None:
    """Overlay several runs' train (solid) and validation (dashed) losses, e.g. JAX vs PyTorch."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (name, history) in enumerate(curves.items()):
        color = f"C{i}"
        epochs = [row["epoch"] for row in history]
        ax.plot(epochs, [row["train_loss"] for row in history], color=color, label=f"{name} train")
        ax.plot(epochs, [row["val_loss"] for row in history], color=color, ls="--", label=f"{name} validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    if title:
        ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_profiles(observed, predicted, names: Sequence[str], path: str | Path) -> None:
    """Observed vs predicted score per position for a few windows, each with its Pearson R.

    observed, predicted: (K, L)."""
    import numpy as np

    k = len(names)
    fig, axes = plt.subplots(k, 1, figsize=(8, 1.9 * k), sharex=True, squeeze=False)
    for ax, obs, pred, name in zip(axes[:, 0], observed, predicted, names):
        r = np.corrcoef(obs, pred)[0, 1] if np.std(obs) > 0 and np.std(pred) > 0 else float("nan")
        ax.plot(obs, color="k", lw=1.2, label="observed")
        ax.plot(pred, color="C3", lw=1.0, label="predicted")
        ax.set_title(f"{name}   Pearson R {r:.3f}", fontsize=9)
        ax.set_ylabel("score")
    axes[0, 0].legend(loc="upper right", fontsize=8)
    axes[-1, 0].set_xlabel("position (bp)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_sweep_curves(histories: dict[str, Sequence[dict]], path: str | Path) -> None:
    """Loss and the first validation metric (e.g. Pearson R) per epoch, a line per configuration."""
    first = next((row for history in histories.values() for row in history), {})
    metric = next((k for k in first if k.startswith("val_") and k != "val_loss"), "val_loss")
    fig, (ax_loss, ax_r) = plt.subplots(1, 2, figsize=(10, 4))
    for i, (name, history) in enumerate(histories.items()):
        epochs = [r["epoch"] for r in history]
        ax_loss.plot(epochs, [r["train_loss"] for r in history], color=f"C{i}", ls=":", lw=1)
        ax_loss.plot(epochs, [r["val_loss"] for r in history], color=f"C{i}", label=name)
        ax_r.plot(epochs, [r[metric] for r in history], color=f"C{i}", label=name)
    ax_loss.set(xlabel="epoch", ylabel="loss (validation solid, train dotted)", yscale="log")
    ax_r.set(xlabel="epoch", ylabel=metric.replace("_", " ").replace("val ", "validation "))
    ax_r.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_segmentation_examples(images, predicted, truth, names: Sequence[str], path: str | Path) -> None:
    """Rows of original / prediction overlay / ground-truth overlay, as the course's plot_seg.

    images (K, H, W) in [0, 1]; predicted, truth (K, H, W) bool."""
    import numpy as np

    k = len(names)
    fig, axes = plt.subplots(k, 3, figsize=(9, 3 * k), squeeze=False)
    for row, (img, pred, true, name) in enumerate(zip(images, predicted, truth, names)):
        for col, (title, mask) in enumerate((("original", None), ("prediction", pred), ("ground truth", true))):
            ax = axes[row, col]
            ax.imshow(img, cmap="gray", vmin=0, vmax=1)
            if mask is not None:
                ax.imshow(np.ma.masked_where(~mask, mask), cmap="autumn", alpha=0.45)
            ax.set_title(f"{name}: {title}" if col == 0 else title, fontsize=9)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_loss_bands(groups: dict[str, Sequence[Sequence[dict]]], path: str | Path, *, title: str = "") -> None:
    """Many runs per group (e.g. seeds per framework): the median train and validation loss
    per epoch, and the 10-90% band across runs. Runs that stopped early count until they stop."""
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for i, (name, runs) in enumerate(groups.items()):
        length = max(len(history) for history in runs)
        for ax, key in zip(axes, ("train_loss", "val_loss")):
            values = np.full((len(runs), length), np.nan)
            for r, history in enumerate(runs):
                values[r, :len(history)] = [row[key] for row in history]
            epochs = np.arange(1, length + 1)
            low, median, high = np.nanpercentile(values, [10, 50, 90], axis=0)
            ax.fill_between(epochs, low, high, color=f"C{i}", alpha=0.25, lw=0)
            ax.plot(epochs, median, color=f"C{i}", label=f"{name}: median of {len(runs)}, 10-90% band")
    for ax, label in zip(axes, ("train loss", "validation loss")):
        ax.set(xlabel="epoch", ylabel=label)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def logo_heights(attributions, x, method: str):
    """Letter heights (L, 4) of one sequence's attributions (L, 4), drawn on its bases.

    Gradient methods: the position's summed attribution on the base the sequence has (for
    input x gradient that is the attribution itself; for integrated gradients it adds the
    other bases' (x - baseline) * gradient terms, so the letters add up to the prediction's
    change). ism: minus the mean change of the three substitutions (how much the base
    present is worth against the alternatives), on the base present."""
    import numpy as np

    attributions, x = np.asarray(attributions, np.float64), np.asarray(x, np.float64)
    if method == "ism":
        per_position = -attributions.sum(-1) / 3.0  # the reference column is 0
    else:
        per_position = attributions.sum(-1)
    return x * per_position[:, None]


def plot_sequence_logo(heights, path: str | Path, *, title: str = "") -> None:
    """Sequence logo of letter heights (L, 4), A C G T (logomaker; negative letters drawn
    below the axis, flipped)."""
    from molml_jax.errors import require

    logomaker = require("logomaker", "genomics", "drawing sequence logos (attribute --plot)")
    import numpy as np
    import pandas as pd

    heights = np.asarray(heights, np.float64)
    frame = pd.DataFrame(heights, columns=list("ACGT"))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.12 * len(frame)), 2.2))
    logomaker.Logo(frame, ax=ax, flip_below=True, color_scheme="classic")
    ax.axhline(0, color="0.6", lw=0.6)
    ax.set_xlabel("position (bp)")
    ax.set_ylabel("attribution")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_ism_heatmap(changes, sequence: str, path: str | Path, *, title: str = "") -> None:
    """In-silico mutagenesis (L, 4): the change of the output for each base at each position
    (0 at the sequence's own base), a diverging map centred at 0."""
    import numpy as np

    changes = np.asarray(changes, np.float64)
    bound = float(np.abs(changes).max()) or 1.0
    fig, ax = plt.subplots(figsize=(max(6.0, 0.12 * len(changes)), 1.9))
    image = ax.imshow(changes.T, aspect="auto", cmap="RdBu_r", vmin=-bound, vmax=bound, interpolation="nearest")
    ax.set_yticks(range(4), list("ACGT"))
    if len(sequence) <= 120:
        ax.set_xticks(range(len(sequence)), list(sequence), fontsize=5)
    ax.set_xlabel("position (bp), sequence base")
    if title:
        ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.03, pad=0.01, label="change")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
