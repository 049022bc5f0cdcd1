"""Instance labels, object tables, label TIFFs and instance metrics on hand-made images."""

import numpy as np
import pytest
import tifffile

from molml_jax.data.instances import TABLE_COLUMNS, label_instances, object_table, write_labels
from molml_jax.metrics.segmentation import (
    _iou_matrix,
    _iou_pairs,
    connected_components,
    instance_counts,
    instance_metrics,
    mean_average_precision,
)

T = (0.5, 0.75)


def blobs(shape, seed, level=0.6):
    from scipy.ndimage import gaussian_filter

    noise = np.random.default_rng(seed).random(shape)
    smooth = gaussian_filter(noise, 2)
    return smooth > np.quantile(smooth, level)


@pytest.mark.parametrize("connectivity", [4, 8])
@pytest.mark.parametrize("seed", range(4))
def test_label_instances_equals_connected_components(seed, connectivity):
    rng = np.random.default_rng(seed)
    for mask in (rng.random((40, 53)) > 0.55, blobs((64, 64), seed)):
        got = label_instances(mask, connectivity=connectivity)
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got, connected_components(mask, connectivity))
    assert label_instances(np.zeros((5, 5))).max() == 0
    np.testing.assert_array_equal(label_instances(np.eye(4) * 0.9), np.eye(4, dtype=np.int32))  # diagonal: 1 object


def two_discs():
    rows, cols = np.mgrid[:40, :60]
    return ((rows - 20) ** 2 + (cols - 20) ** 2 <= 100) | ((rows - 20) ** 2 + (cols - 36) ** 2 <= 100)


def test_split_touching_discs():
    mask = two_discs()
    assert label_instances(mask).max() == 1
    split = label_instances(mask, split_touching=True, min_distance=5)
    assert split.dtype == np.int32 and split.max() == 2
    assert ((split > 0) == mask).all()
    assert split[20, 12] == 1 and split[20, 44] == 2  # raster order: the left disc starts first
    areas = np.bincount(split.ravel())[1:]
    assert abs(int(areas[0]) - int(areas[1])) <= 25
    # a lone small object without a distinct peak still gets a label; separate objects stay apart
    lone = np.zeros((30, 30), bool)
    lone[2, 2:6] = True
    lone[10:20, 10:20] = True
    np.testing.assert_array_equal(label_instances(lone, split_touching=True), label_instances(lone))


def test_label_instances_rejects_bad_input():
    with pytest.raises(ValueError, match="expected a \\(H, W\\) mask"):
        label_instances(np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="connectivity must be 4 or 8"):
        label_instances(np.zeros((3, 3)), connectivity=6)


def test_object_table_hand_made():
    labels = np.zeros((6, 6), np.int32)
    labels[0:2, 0:3] = 1
    labels[3, 4] = labels[4, 4] = labels[4, 5] = 3  # label 2 absent: no row
    image = np.arange(36, dtype=np.uint16).reshape(6, 6) * 1000
    table = object_table("a.tif", labels, image)
    assert list(table.columns) == TABLE_COLUMNS
    assert table["image"].tolist() == ["a.tif", "a.tif"]
    assert table["label"].tolist() == [1, 3]
    assert table["area"].tolist() == [6, 3]
    np.testing.assert_allclose(table["centroid_row"], [0.5, 11 / 3])
    np.testing.assert_allclose(table["centroid_col"], [1.0, 13 / 3])
    assert table[["bbox_min_row", "bbox_min_col", "bbox_max_row", "bbox_max_col"]].values.tolist() == [
        [0, 0, 2, 3], [3, 4, 5, 6]]
    np.testing.assert_allclose(table["mean_intensity"], [4000.0, 79000 / 3])


def test_object_table_agrees_with_regionprops_and_empty():
    from skimage.measure import regionprops

    labels = label_instances(blobs((80, 70), 3))
    image = np.random.default_rng(0).integers(0, 4096, size=labels.shape).astype(np.uint16)
    table = object_table("x", labels, image)
    props = regionprops(labels, intensity_image=image)
    assert len(table) == len(props) > 3
    np.testing.assert_array_equal(table["area"], [p.area for p in props])
    np.testing.assert_allclose(table[["centroid_row", "centroid_col"]].values, [p.centroid for p in props])
    np.testing.assert_array_equal(table[["bbox_min_row", "bbox_min_col", "bbox_max_row", "bbox_max_col"]].values,
                                  [p.bbox for p in props])
    np.testing.assert_allclose(table["mean_intensity"], [p.intensity_mean for p in props])
    empty = object_table("e", np.zeros((4, 4), np.int32), np.zeros((4, 4)))
    assert list(empty.columns) == TABLE_COLUMNS and len(empty) == 0
    with pytest.raises(ValueError, match="has shape"):
        object_table("x", labels, image[:-1])


@pytest.mark.parametrize("top,dtype", [(65535, np.uint16), (70000, np.uint32)])
def test_write_labels_round_trip(tmp_path, top, dtype):
    labels = np.zeros((20, 30), np.int64)
    labels[2:5, 3:9] = 7
    labels[10:12, 10:20] = top
    path = write_labels(tmp_path / "sub" / "labels.tif", labels)
    back = tifffile.imread(path)
    assert back.dtype == dtype
    np.testing.assert_array_equal(back, labels)


def image_a():
    """3 true and 3 predicted objects: IoU 0.75, IoU 1, one missed, one spurious."""
    true = np.zeros((10, 10), np.int32)
    pred = np.zeros((10, 10), np.int32)
    true[0:4, 0:4] = 7           # non-consecutive labels on purpose
    pred[0:4, 0:3] = 42          # IoU 12 / 16 = 0.75
    true[6:10, 6:10] = 3
    pred[6:10, 6:10] = 5         # IoU 1
    true[0:2, 7:9] = 9           # missed
    pred[8:10, 0:2] = 1          # spurious
    return true, pred


def test_instance_counts_hand_made():
    true, pred = image_a()
    c = instance_counts(true, pred, T)
    assert (c["n_true"], c["n_pred"]) == (3, 3)
    assert (c["tp"], c["fp"], c["fn"]) == ([2, 1], [1, 2], [1, 2])
    np.testing.assert_allclose(c["matched_iou_sum"], [1.75, 1.0])


def test_instance_metrics_single_image():
    m = instance_metrics([image_a()[0]], [image_a()[1]], T)
    np.testing.assert_allclose(m["precision"], [2 / 3, 1 / 3])
    np.testing.assert_allclose(m["recall"], [2 / 3, 1 / 3])
    np.testing.assert_allclose(m["f1"], [2 / 3, 1 / 3])
    np.testing.assert_allclose(m["pq"], [1.75 / 3, 1 / 3])
    np.testing.assert_allclose(m["ap"], [2 / 4, 1 / 5])
    assert m["ap_mean"] == pytest.approx((0.5 + 0.2) / 2)


def test_instance_metrics_pooled_over_images():
    true_a, pred_a = image_a()
    true_b = np.zeros((5, 5), np.int32)  # nothing to find, one spurious object
    pred_b = np.zeros((5, 5), np.int32)
    pred_b[1:3, 1:3] = 1
    m = instance_metrics([true_a, true_b], [pred_a, pred_b], T)
    assert (m["tp"], m["fp"], m["fn"]) == ([2, 1], [2, 3], [1, 2])
    assert (m["n_true"], m["n_pred"], m["n_images"]) == (3, 4, 2)
    np.testing.assert_allclose(m["precision"], [2 / 4, 1 / 4])
    np.testing.assert_allclose(m["recall"], [2 / 3, 1 / 3])
    np.testing.assert_allclose(m["f1"], [4 / 7, 2 / 7])
    np.testing.assert_allclose(m["pq"], [1.75 / 3.5, 1 / 3.5])
    np.testing.assert_allclose(m["ap"], [(0.5 + 0) / 2, (0.2 + 0) / 2])  # per image, then averaged


def test_instance_metrics_empty_cases():
    z = np.zeros((4, 4), np.int32)
    m = instance_metrics([z, z], [z, z], T)
    for key in ("precision", "recall", "f1", "pq", "ap"):
        assert m[key] == [1.0, 1.0]
    assert m["ap_mean"] == 1.0 and m["tp"] == [0, 0]
    one = z.copy()
    one[1:3, 1:3] = 1
    m = instance_metrics([z], [one], T)  # objects on one side only
    for key in ("precision", "recall", "f1", "pq", "ap"):
        assert m[key] == [0.0, 0.0]
    m = instance_metrics([one], [z], T)
    assert m["recall"] == [0.0, 0.0] and m["ap"] == [0.0, 0.0] and m["fn"] == [1, 1]
    with pytest.raises(ValueError, match="no images"):
        instance_metrics([], [])


def test_low_threshold_is_one_to_one():
    true = np.zeros((4, 8), np.int32)
    true[:, :4], true[:, 4:] = 1, 2
    pred = np.ones((4, 8), np.int32)  # one object over both: IoU 0.5 with each
    c = instance_counts(true, pred, (0.3, 0.5))
    assert (c["tp"], c["fp"], c["fn"]) == ([1, 0], [0, 1], [1, 2])
    np.testing.assert_allclose(c["matched_iou_sum"], [0.5, 0.0])


@pytest.mark.parametrize("seed", range(3))
def test_iou_pairs_are_iou_matrix_nonzeros(seed):
    p = connected_components(blobs((50, 60), seed))
    t = connected_components(blobs((50, 60), seed + 10))
    dense = _iou_matrix(p, t)
    pi, ti, iou = _iou_pairs(p, t)
    sparse = np.zeros_like(dense)
    sparse[pi, ti] = iou
    np.testing.assert_allclose(sparse, dense, rtol=1e-15)


def test_ap_mean_equals_mean_average_precision():
    masks_t = [blobs((48, 64), s) for s in range(5)] + [np.zeros((8, 8), bool)]
    masks_p = [blobs((48, 64), s, level=0.62) | blobs((48, 64), s + 20, level=0.95) for s in range(5)]
    masks_p += [np.zeros((8, 8), bool)]
    m = instance_metrics([connected_components(t) for t in masks_t], [connected_components(p) for p in masks_p])
    assert m["thresholds"][0] == 0.5 and len(m["ap"]) == 10
    assert 0 < m["ap_mean"] < 1
    assert m["ap_mean"] == pytest.approx(mean_average_precision(masks_p, masks_t), abs=1e-12)
