"""Dice loss, Dice/IoU, connected components and the DSB 2018 score on hand-made masks."""

import numpy as np
import pytest

from molml_jax.metrics.segmentation import (
    DSB_THRESHOLDS,
    connected_components,
    dice_and_iou,
    dice_loss,
    dice_loss_jax,
    dsb2018_average_precision,
    mean_average_precision,
)


def square(h, w, r0, c0, r1, c1):
    m = np.zeros((h, w), bool)
    m[r0:r1, c0:c1] = True
    return m


def test_dice_loss_formula():
    p = np.array([[0.5, 1.0], [0.0, 0.25]])
    t = np.array([[1.0, 1.0], [0.0, 0.0]])
    # sum(p t) = 1.5, sum p = 1.75, sum t = 2 -> 1 - 4 / 4.75
    assert dice_loss(p, t) == pytest.approx(1 - 4 / 4.75)
    assert dice_loss(np.zeros((3, 3)), np.zeros((3, 3))) == 0.0  # the +1 handles empty images
    batch = np.stack([p, np.zeros_like(p)])
    np.testing.assert_allclose(dice_loss(batch, np.stack([t, t])), [1 - 4 / 4.75, 1 - 1 / 3])
    jax_loss = np.asarray(dice_loss_jax(batch.astype(np.float32), np.stack([t, t]).astype(np.float32)))
    np.testing.assert_allclose(jax_loss, [1 - 4 / 4.75, 1 - 1 / 3], rtol=1e-6)


def test_dice_and_iou():
    pred = np.array([[[0.9, 0.8, 0.1], [0.2, 0.7, 0.0]]])  # 3 foreground pixels
    true = np.array([[[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]]])  # 3, overlap 2
    dice, iou = dice_and_iou(pred, true)
    np.testing.assert_allclose(dice, [2 * 2 / 6])
    np.testing.assert_allclose(iou, [2 / 4])
    dice, iou = dice_and_iou(np.zeros((2, 4, 4)), np.stack([np.zeros((4, 4)), np.ones((4, 4))]))
    np.testing.assert_array_equal(dice, [1.0, 0.0])  # both empty -> 1
    np.testing.assert_array_equal(iou, [1.0, 0.0])
    d, i = dice_and_iou(np.full((3, 3), 0.5), np.zeros((3, 3)))  # 0.5 is not > 0.5: empty
    assert d[0] == 1.0 and i[0] == 1.0


def test_connected_components():
    m = np.array(
        [
            [1, 1, 0, 0, 1],
            [0, 1, 0, 1, 0],
            [0, 0, 0, 0, 0],
            [1, 0, 1, 1, 1],
            [1, 0, 0, 0, 1],
        ],
        bool,
    )
    eight = connected_components(m)
    np.testing.assert_array_equal(
        eight,
        [
            [1, 1, 0, 0, 2],
            [0, 1, 0, 2, 0],
            [0, 0, 0, 0, 0],
            [3, 0, 4, 4, 4],
            [3, 0, 0, 0, 4],
        ],
    )
    four = connected_components(m, connectivity=4)
    assert four.max() == 5 and four[0, 4] != four[1, 3]
    assert connected_components(np.zeros((4, 4))).max() == 0
    # a spiral-like snake is one object
    snake = np.zeros((64, 64), bool)
    snake[::2, :] = True
    snake[1::4, -1] = True
    snake[3::4, 0] = True
    assert connected_components(snake, 4).max() == 1


def test_dsb_perfect_and_empty():
    a = square(20, 20, 2, 2, 6, 6) | square(20, 20, 10, 10, 15, 16)
    assert dsb2018_average_precision(a, a) == 1.0
    empty = np.zeros((20, 20), bool)
    assert dsb2018_average_precision(empty, empty) == 1.0
    assert dsb2018_average_precision(a, empty) == 0.0
    assert dsb2018_average_precision(empty, a) == 0.0


def test_dsb_missed_object():
    one = square(20, 20, 2, 2, 6, 6)
    two = one | square(20, 20, 10, 10, 15, 16)
    # TP 1, FN 1 at every threshold -> 1/2
    assert dsb2018_average_precision(one, two) == pytest.approx(0.5)
    # an extra false object instead: TP 1, FP 1
    assert dsb2018_average_precision(two, one) == pytest.approx(0.5)


def test_dsb_merged_prediction():
    true = square(10, 20, 2, 2, 8, 8) | square(10, 20, 2, 9, 8, 15)  # two 36-pixel objects
    pred = square(10, 20, 2, 2, 8, 15)  # one 78-pixel object covering both and the gap
    # IoU 36/78 < 0.5 with both: no TP; FP 1, FN 2 -> 0 at all thresholds
    assert dsb2018_average_precision(pred, true) == 0.0
    # a partial overlap: IoU 0.75 -> matched up to t = 0.7, then missed
    true = square(10, 10, 0, 0, 4, 4)
    pred = square(10, 10, 0, 0, 4, 3)
    expected = np.mean([1.0 if 0.75 > t else 0.0 for t in DSB_THRESHOLDS])
    assert dsb2018_average_precision(pred, true) == pytest.approx(expected) == pytest.approx(0.5)


def test_mean_average_precision():
    a = square(12, 12, 1, 1, 5, 5)
    b = a | square(12, 12, 7, 7, 11, 11)
    assert mean_average_precision([a, a, np.zeros_like(a)], [a, b, a]) == pytest.approx((1 + 0.5 + 0) / 3)
    with pytest.raises(ValueError):
        mean_average_precision([a], [a, b])
