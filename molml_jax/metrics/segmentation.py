"""Segmentation losses and metrics: Dice loss, Dice/IoU, connected components, DSB 2018 AP,
instance metrics (precision, recall, F1, panoptic quality).

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

Instance metrics
----------------
`instance_counts` and `instance_metrics` score labelled nuclei (int labels, 0 background,
any numbering: touching nuclei may be separate objects). At an IoU threshold t a true and
a predicted object match when IoU > t (strictly); for t >= 0.5 a match is one-to-one by
itself, below 0.5 the one-to-one assignment maximising the number of matches, then the
summed IoU, is used (as StarDist). TP = matches, FP = n_pred - TP, FN = n_true - TP.
Tools disagree on how to average these numbers; the ones here are:
* precision TP / (TP + FP), recall TP / (TP + FN), F1 2TP / (2TP + FP + FN) and panoptic
  quality PQ = (sum of the matched IoUs) / (TP + FP/2 + FN/2) (Kirillov et al. 2019, as
  StarDist's `panoptic_quality`): from counts POOLED over the images (StarDist's
  `matching_dataset(by_image=False)`), so large images weigh more. No objects on either
  side at all: 1.0; a zero denominator otherwise: 0.0.
* ap: the DSB 2018 precision TP / (TP + FP + FN) computed PER IMAGE (1.0 with no objects
  on either side, 0.0 with objects on one side only) and averaged over images, per
  threshold; ap_mean, its mean over the thresholds, is the DSB 2018 score
  (`mean_average_precision`) when the objects are connected components.
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


def _consecutive(labels: np.ndarray, what: str) -> np.ndarray:
    """int32 labels renumbered 1..n in the order of the old numbers (0 stays background)."""
    labels = np.asarray(labels)
    if labels.ndim != 2 or not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_):
        raise ValueError(f"instance_counts: {what} must be integer labels (H, W), got {labels.dtype} {labels.shape}")
    if labels.size == 0:
        return np.zeros(labels.shape, np.int32)
    if labels.min() < 0:
        raise ValueError(f"instance_counts: {what} has negative labels")
    top = int(labels.max())
    if top <= 4 * labels.size + 1024:  # a lookup table: no sort of the pixels
        present = np.bincount(labels.ravel().astype(np.intp, copy=False), minlength=top + 1) > 0
        present[0] = False
        mapping = np.zeros(top + 1, np.int32)
        mapping[present] = np.arange(1, int(present.sum()) + 1, dtype=np.int32)
        return mapping[labels]
    values, inverse = np.unique(labels, return_inverse=True)
    inverse = inverse.reshape(labels.shape).astype(np.int32)
    return inverse + 1 if values[0] != 0 else inverse


def _iou_pairs(pred_labels: np.ndarray, true_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The object pairs that overlap: pred index, true index (0-based) and IoU, from
    consecutive labels. Sparse (the pairs, not n_pred x n_true), so that images with tens of
    thousands of nuclei fit in memory; the values are `_iou_matrix`'s nonzero entries."""
    n_p, n_t = int(pred_labels.max(initial=0)), int(true_labels.max(initial=0))
    area_p = np.bincount(pred_labels.ravel(), minlength=n_p + 1)[1:].astype(np.float64)
    area_t = np.bincount(true_labels.ravel(), minlength=n_t + 1)[1:].astype(np.float64)
    both = (pred_labels > 0) & (true_labels > 0)
    keys = pred_labels[both].astype(np.int64) * (n_t + 1) + true_labels[both]
    keys, inter = np.unique(keys, return_counts=True)
    p, t = keys // (n_t + 1) - 1, keys % (n_t + 1) - 1
    return p, t, inter / (area_p[p] + area_t[t] - inter)


def instance_counts(true_labels: np.ndarray, pred_labels: np.ndarray, thresholds=DSB_THRESHOLDS) -> dict:
    """Matches between the labelled objects of one image (see "Instance metrics" above).

    true_labels, pred_labels: int (H, W), 0 background, any numbering. Returns {"n_true",
    "n_pred", and per threshold lists "tp", "fp", "fn", "matched_iou_sum"}. Thresholds
    below 0.5 solve an assignment on a dense n_pred x n_true matrix (small images only).
    """
    t_lab = _consecutive(true_labels, "true_labels")
    p_lab = _consecutive(pred_labels, "pred_labels")
    if t_lab.shape != p_lab.shape:
        raise ValueError(f"instance_counts: true {t_lab.shape} and pred {p_lab.shape} differ in shape")
    n_t, n_p = int(t_lab.max(initial=0)), int(p_lab.max(initial=0))
    p_idx, t_idx, iou = _iou_pairs(p_lab, t_lab)
    out = {"n_true": n_t, "n_pred": n_p, "tp": [], "fp": [], "fn": [], "matched_iou_sum": []}
    for t in thresholds:
        if t >= 0.5 or iou.size == 0:
            matched = iou[iou > t]  # one-to-one by itself: IoU > 0.5 with two objects is impossible
        else:
            from scipy.optimize import linear_sum_assignment

            dense = np.zeros((n_p, n_t))
            dense[p_idx, t_idx] = iou
            hit = dense > t
            rows, cols = linear_sum_assignment(-(hit + dense / (2 * min(n_p, n_t))))
            keep = hit[rows, cols]
            matched = dense[rows[keep], cols[keep]]
        tp = int(matched.size)
        out["tp"].append(tp)
        out["fp"].append(n_p - tp)
        out["fn"].append(n_t - tp)
        out["matched_iou_sum"].append(float(matched.sum()))
    return out


def _ratio(num: float, den: float, nothing: bool) -> float:
    return 1.0 if nothing else (float(num) / den if den else 0.0)


def instance_metrics(trues: Sequence[np.ndarray], preds: Sequence[np.ndarray], thresholds=DSB_THRESHOLDS) -> dict:
    """Instance metrics over images (see "Instance metrics" above).

    trues, preds: equal-length lists of int labels (H, W) (sizes may differ between images).
    Returns {"thresholds", "precision", "recall", "f1", "pq", "ap" (lists, one value per
    threshold), "ap_mean" (float), "tp", "fp", "fn" (pooled counts per threshold),
    "n_true", "n_pred", "n_images"}.
    """
    if len(trues) != len(preds):
        raise ValueError(f"instance_metrics: {len(trues)} true label images but {len(preds)} predictions")
    if len(trues) == 0:
        raise ValueError("instance_metrics: no images")
    thresholds = [float(t) for t in thresholds]
    k = len(thresholds)
    tp, fp, fn, iou_sum, ap = (np.zeros(k) for _ in range(5))
    n_true = n_pred = 0
    for true, pred in zip(trues, preds):
        c = instance_counts(true, pred, thresholds)
        n_true += c["n_true"]
        n_pred += c["n_pred"]
        tp += c["tp"]
        fp += c["fp"]
        fn += c["fn"]
        iou_sum += c["matched_iou_sum"]
        for j in range(k):
            ap[j] += _ratio(c["tp"][j], c["tp"][j] + c["fp"][j] + c["fn"][j], c["n_true"] + c["n_pred"] == 0)
    nothing = n_true + n_pred == 0
    ap = (ap / len(trues)).tolist()
    return {
        "thresholds": thresholds,
        "precision": [_ratio(tp[j], tp[j] + fp[j], nothing) for j in range(k)],
        "recall": [_ratio(tp[j], tp[j] + fn[j], nothing) for j in range(k)],
        "f1": [_ratio(2 * tp[j], 2 * tp[j] + fp[j] + fn[j], nothing) for j in range(k)],
        "pq": [_ratio(iou_sum[j], tp[j] + fp[j] / 2 + fn[j] / 2, nothing) for j in range(k)],
        "ap": ap,
        "ap_mean": float(np.mean(ap)),
        "tp": tp.astype(int).tolist(),
        "fp": fp.astype(int).tolist(),
        "fn": fn.astype(int).tolist(),
        "n_true": n_true,
        "n_pred": n_pred,
        "n_images": len(trues),
    }


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
