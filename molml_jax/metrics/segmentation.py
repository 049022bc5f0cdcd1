"""Segmentation losses and metrics: Dice loss, Dice/IoU, connected components, DSB 2018 AP.

Pure numpy, except `dice_loss_jax` (jax.numpy, imported when it is called) for use inside
a jitted train step.

Conventions
-----------
* Masks are binarised as `value > threshold` (threshold 0.5), both predictions
  (probabilities) and targets (the course's JPEG masks / 255 have compression noise).
* Dice and IoU of an image where prediction and target are both empty are 1.0 (nothing
  to find, nothing found); one empty and the other not gives 0.0.
* Objects are 8-connected components (`connected_components`, connectivity=8): the same
  as `skimage.measure.label`'s default (full connectivity), which the Data Science Bowl
  2018 kernels used to turn a predicted semantic mask into nuclei; it keeps a nucleus
  whose outline touches itself only diagonally as one object. connectivity=4 is offered
  (scipy.ndimage.label's default). Note the course masks are merged (semantic) masks, so
  touching nuclei are one object in the ground truth as well.
* DSB 2018 average precision of one image: thresholds t = 0.50, 0.55, ..., 0.95; a
  predicted and a true object match when IoU > t (strictly; above 0.5 a match is
  necessarily one-to-one); precision(t) = TP / (TP + FP + FN); the image's score is the
  mean over thresholds. No true and no predicted objects: 1.0; objects on one side only:
  0.0. The dataset score is the mean over images (`mean_average_precision`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

DSB_THRESHOLDS = tuple(np.round(np.arange(0.5, 1.0, 0.05), 2).tolist())  # 0.5 ... 0.95


def dice_loss(pred: np.ndarray, target: np.ndarray) -> np.ndarray | float:
    """1 - (2 sum(p t) + 1) / (sum p + sum t + 1), per image (the problem set's formula).

    pred, target: (H, W) -> a float; (N, H, W) or (N, H, W, C) -> (N,) (sums over all
    axes but the first). pred are probabilities, target the masks as read (not
    thresholded), as in the course.
    """
    p = np.asarray(pred, dtype=np.float64)
    t = np.asarray(target, dtype=np.float64)
    if p.shape != t.shape:
        raise ValueError(f"dice_loss: pred {p.shape} and target {t.shape} differ in shape")
    if p.ndim == 2:
        return float(1.0 - (2.0 * np.sum(p * t) + 1.0) / (np.sum(p) + np.sum(t) + 1.0))
    axes = tuple(range(1, p.ndim))
    inter = np.sum(p * t, axis=axes)
    return 1.0 - (2.0 * inter + 1.0) / (np.sum(p, axis=axes) + np.sum(t, axis=axes) + 1.0)


def dice_loss_jax(pred, target):
    """Jittable per-example Dice loss: pred, target (B, H, W[, C]) -> (B,)."""
    import jax.numpy as jnp

    axes = tuple(range(1, pred.ndim))
    inter = jnp.sum(pred * target, axis=axes)
    return 1.0 - (2.0 * inter + 1.0) / (jnp.sum(pred, axis=axes) + jnp.sum(target, axis=axes) + 1.0)


def _binary(x: np.ndarray, threshold: float) -> np.ndarray:
    x = np.asarray(x)
    return x if x.dtype == np.bool_ else x > threshold


def dice_and_iou(
    pred_prob: np.ndarray, target: np.ndarray, threshold: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """Per-image Dice 2|P&T|/(|P|+|T|) and IoU |P&T|/|P|T|| of masks binarised at `threshold`.

    pred_prob, target: (N, H, W) (or (H, W), treated as N = 1); bool arrays are used as they
    are, numbers binarised as value > threshold. Both empty: 1.0. Returns float64 (N,), (N,).
    """
    p = _binary(pred_prob, threshold)
    t = _binary(target, threshold)
    if p.shape != t.shape:
        raise ValueError(f"dice_and_iou: pred {p.shape} and target {t.shape} differ in shape")
    if p.ndim == 2:
        p, t = p[None], t[None]
    axes = tuple(range(1, p.ndim))
    inter = np.sum(p & t, axis=axes).astype(np.float64)
    sp = np.sum(p, axis=axes).astype(np.float64)
    st = np.sum(t, axis=axes).astype(np.float64)
    union = sp + st - inter
    empty = union == 0
    dice = np.where(empty, 1.0, 2.0 * inter / np.where(empty, 1.0, sp + st))
    iou = np.where(empty, 1.0, inter / np.where(empty, 1.0, union))
    return dice, iou


def connected_components(mask: np.ndarray, connectivity: int = 8) -> np.ndarray:
    """Label the connected foreground regions of a (H, W) mask.

    mask: bool, or numbers (foreground = value > 0.5). connectivity: 8 (default, see the
    module docstring) or 4. Returns int32 (H, W): 0 background, objects 1..n numbered in
    raster order of their first pixel (as scipy.ndimage.label / skimage.measure.label).

    Vectorised union-find: hook the larger root of every edge to the smaller, then
    compress paths by pointer jumping, until no edge joins two roots.
    """
    fg = _binary(mask, 0.5)
    if fg.ndim != 2:
        raise ValueError(f"connected_components: expected a (H, W) mask, got shape {fg.shape}")
    if connectivity not in (4, 8):
        raise ValueError(f"connected_components: connectivity must be 4 or 8, got {connectivity}")
    h, w = fg.shape
    labels = np.zeros((h, w), dtype=np.int32)
    n = int(fg.sum())
    if n == 0:
        return labels
    ids = np.full((h, w), -1, dtype=np.int64)
    ids[fg] = np.arange(n)
    pairs = [(ids[:, :-1], ids[:, 1:]), (ids[:-1, :], ids[1:, :])]
    if connectivity == 8:
        pairs += [(ids[:-1, :-1], ids[1:, 1:]), (ids[:-1, 1:], ids[1:, :-1])]
    a_list, b_list = [], []
    for a, b in pairs:
        both = (a >= 0) & (b >= 0)
        a_list.append(a[both])
        b_list.append(b[both])
    a = np.concatenate(a_list)
    b = np.concatenate(b_list)
    parent = np.arange(n)
    while a.size:
        ra, rb = parent[a], parent[b]
        differ = ra != rb
        if not differ.any():
            break
        a, b, ra, rb = a[differ], b[differ], ra[differ], rb[differ]
        np.minimum.at(parent, np.maximum(ra, rb), np.minimum(ra, rb))
        while True:  # pointer jumping until every node points at its root
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand
    _, comp = np.unique(parent, return_inverse=True)  # roots are each object's first pixel
    labels[fg] = comp.astype(np.int32) + 1
    return labels


def _iou_matrix(pred_labels: np.ndarray, true_labels: np.ndarray) -> np.ndarray:
    """(n_pred, n_true) IoU between labelled objects (labels 1..n, 0 background)."""
    n_p, n_t = int(pred_labels.max()), int(true_labels.max())
    joint = np.bincount(
        (pred_labels.astype(np.int64) * (n_t + 1) + true_labels).ravel(), minlength=(n_p + 1) * (n_t + 1)
    ).reshape(n_p + 1, n_t + 1)
    inter = joint[1:, 1:].astype(np.float64)
    area_p = joint[1:, :].sum(axis=1).astype(np.float64)
    area_t = joint[:, 1:].sum(axis=0).astype(np.float64)
    return inter / (area_p[:, None] + area_t[None, :] - inter)


def dsb2018_average_precision(
    pred_mask: np.ndarray, true_mask: np.ndarray, *, connectivity: int = 8
) -> float:
    """The Data Science Bowl 2018 score of one image (see the module docstring).

    pred_mask, true_mask: (H, W) bool (or numbers, foreground = value > 0.5). Objects are
    their connected components.
    """
    p_lab = connected_components(pred_mask, connectivity)
    t_lab = connected_components(true_mask, connectivity)
    if p_lab.shape != t_lab.shape:
        raise ValueError(
            f"dsb2018_average_precision: pred {p_lab.shape} and true {t_lab.shape} differ in shape"
        )
    n_p, n_t = int(p_lab.max()), int(t_lab.max())
    if n_p == 0 and n_t == 0:
        return 1.0
    if n_p == 0 or n_t == 0:
        return 0.0
    iou = _iou_matrix(p_lab, t_lab)
    scores = []
    for t in DSB_THRESHOLDS:
        hit = iou > t
        tp = int(np.count_nonzero(hit))
        fp = n_p - int(np.count_nonzero(hit.any(axis=1)))
        fn = n_t - int(np.count_nonzero(hit.any(axis=0)))
        scores.append(tp / (tp + fp + fn))
    return float(np.mean(scores))


def mean_average_precision(
    preds: Sequence[np.ndarray], trues: Sequence[np.ndarray], *, connectivity: int = 8
) -> float:
    """Mean DSB 2018 average precision over images (each (H, W); sizes may differ)."""
    if len(preds) != len(trues):
        raise ValueError(f"mean_average_precision: {len(preds)} predictions but {len(trues)} true masks")
    if len(preds) == 0:
        raise ValueError("mean_average_precision: no images")
    return float(
        np.mean([dsb2018_average_precision(p, t, connectivity=connectivity) for p, t in zip(preds, trues)])
    )


def thresholded_dice_iou(pred, true) -> dict:
    """Per-image Dice and IoU of boolean masks (B, H, W) -> {'dice': (B,), 'iou': (B,)} (jnp,
    for the engine's per-batch metrics); an image where both masks are empty scores 1."""
    import jax.numpy as jnp

    inter = jnp.sum(pred & true, axis=(1, 2)).astype(jnp.float32)
    p, t = jnp.sum(pred, axis=(1, 2)).astype(jnp.float32), jnp.sum(true, axis=(1, 2)).astype(jnp.float32)
    union = p + t - inter
    dice = jnp.where(p + t > 0, 2 * inter / jnp.maximum(p + t, 1), 1.0)
    iou = jnp.where(union > 0, inter / jnp.maximum(union, 1), 1.0)
    return {"dice": dice, "iou": iou}
