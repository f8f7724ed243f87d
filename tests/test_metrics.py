"""Tests for samseg_core.metrics on hand-computed label maps."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from samseg_core.metrics import (
    DatasetIoUAccumulator,
    binary_boundary_iou,
    boundary_iou,
    confusion_and_missed,
    confusion_matrix,
    scores_from_confusion,
    segmentation_scores,
)
from samseg_core.metrics import _boundary as boundary_pixels

# 2x3 example: cm = [[1, 1, 0], [0, 2, 0], [1, 0, 1]].
GT = np.array([[0, 0, 1], [1, 2, 2]])
PRED = np.array([[0, 1, 1], [1, 2, 0]])


def test_confusion_matrix_rows_gt_cols_pred():
    cm = confusion_matrix(GT, PRED, num_classes=3)
    assert cm.dtype == np.int64
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 2, 0], [1, 0, 1]])


def test_per_class_iou_and_miou():
    scores = segmentation_scores(GT, PRED, num_classes=3)
    np.testing.assert_allclose(scores.per_class_iou, [1 / 3, 2 / 3, 1 / 2])
    assert scores.miou == pytest.approx(1 / 2)


def test_pixel_and_mean_accuracy():
    scores = segmentation_scores(GT, PRED, num_classes=3)
    np.testing.assert_allclose(scores.per_class_accuracy, [1 / 2, 1, 1 / 2])
    assert scores.pixel_accuracy == pytest.approx(4 / 6)
    assert scores.mean_accuracy == pytest.approx(2 / 3)


def test_ignore_index_pixels_excluded():
    scores = segmentation_scores(np.array([[0, 255]]), np.array([[0, 1]]), num_classes=2)
    assert scores.per_class_iou[0] == 1.0
    assert math.isnan(scores.per_class_iou[1])
    assert scores.miou == 1.0


def test_reduce_zero_label_shifts_gt_and_ignores_zero():
    gt = np.array([[0, 1, 2]], dtype=np.uint8)
    pred = np.array([[5, 0, 1]])
    cm = confusion_matrix(gt, pred, num_classes=2, reduce_zero_label=True)
    np.testing.assert_array_equal(cm, [[1, 0], [0, 1]])


def test_reduce_zero_label_keeps_ignore_index_ignored():
    cm = confusion_matrix(np.array([[255]]), np.array([[254]]), num_classes=255, reduce_zero_label=True)
    assert cm.sum() == 0


def test_class_absent_from_both_is_nan_and_excluded():
    scores = segmentation_scores(np.array([[0, 1]]), np.array([[0, 1]]), num_classes=3)
    assert math.isnan(scores.per_class_iou[2])
    assert math.isnan(scores.per_class_accuracy[2])
    assert scores.miou == 1.0


def test_class_only_in_prediction_counts_as_zero():
    scores = segmentation_scores(np.array([[0, 0]]), np.array([[0, 1]]), num_classes=3)
    assert scores.per_class_iou[1] == 0.0
    assert scores.miou == pytest.approx((1 / 2 + 0) / 2)
    assert math.isnan(scores.per_class_accuracy[1])
    assert scores.mean_accuracy == pytest.approx(1 / 2)


def test_out_of_range_prediction_is_false_negative():
    gt, pred = np.array([[0, 0]]), np.array([[0, 255]])
    cm, missed = confusion_and_missed(gt, pred, num_classes=2)
    np.testing.assert_array_equal(cm, [[1, 0], [0, 0]])
    np.testing.assert_array_equal(missed, [1, 0])
    scores = segmentation_scores(gt, pred, num_classes=2)
    assert scores.per_class_iou[0] == pytest.approx(1 / 2)
    assert scores.pixel_accuracy == pytest.approx(1 / 2)


def test_out_of_range_gt_is_ignored():
    cm = confusion_matrix(np.array([[0, 7, -1]]), np.array([[0, 1, 1]]), num_classes=2, ignore_index=None)
    np.testing.assert_array_equal(cm, [[1, 0], [0, 0]])


def test_classes_subset_limits_the_mean_only():
    scores = segmentation_scores(GT, PRED, num_classes=3, classes=[1, 2])
    assert scores.miou == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert scores.per_class_iou[0] == pytest.approx(1 / 3)


def test_no_class_present_gives_nan():
    scores = segmentation_scores(np.array([[255]]), np.array([[0]]), num_classes=2)
    assert math.isnan(scores.miou)
    assert math.isnan(scores.pixel_accuracy)


def test_shape_mismatch_raises_with_both_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(3, 2\)"):
        confusion_matrix(np.zeros((2, 3), int), np.zeros((3, 2), int), num_classes=2)


def test_float_label_map_rejected():
    with pytest.raises(ValueError, match="integer"):
        confusion_matrix(np.zeros((1, 2)), np.zeros((1, 2), int), num_classes=2)


def test_scores_from_confusion_matches_segmentation_scores():
    scores = scores_from_confusion(confusion_matrix(GT, PRED, num_classes=3))
    assert scores.miou == pytest.approx(segmentation_scores(GT, PRED, num_classes=3).miou)


def test_to_dict_plain_floats_nan_none_and_names():
    scores = segmentation_scores(np.array([[0, 1]]), np.array([[0, 1]]), num_classes=3)
    d = scores.to_dict({0: "sky", 1: "road"})
    assert d["miou"] == 1.0 and type(d["miou"]) is float
    assert d["per_class_iou"] == {"sky": 1.0, "road": 1.0, "2": None}


def _square(size: int, top: int, left: int, side: int) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    mask[top : top + side, left : left + side] = True
    return mask


def test_boundary_iou_identical_masks_is_one():
    mask = _square(20, 5, 5, 10)
    assert binary_boundary_iou(mask, mask) == 1.0


def test_boundary_iou_disjoint_masks_is_zero():
    assert binary_boundary_iou(_square(20, 0, 0, 5), _square(20, 10, 10, 5)) == 0.0


def test_boundary_iou_shifted_square():
    # 20x20 image: boundary width max(1, round(0.02 * 28.3)) = 1, so each boundary is the 36-pixel outline.
    # Shifting by one column shares 9 pixels of the top edge and 9 of the bottom: 18 / (36 + 36 - 18).
    iou = binary_boundary_iou(_square(20, 5, 5, 10), _square(20, 5, 6, 10))
    assert iou == pytest.approx(1 / 3)


def test_boundary_iou_both_empty_is_nan():
    empty = np.zeros((4, 4), dtype=bool)
    assert math.isnan(binary_boundary_iou(empty, empty))


@pytest.mark.parametrize("width", [1, 3])
def test_boundary_equals_mask_minus_erosion(width):
    mask = np.random.default_rng(width).random((30, 25)) < 0.7
    eroded = ndimage.binary_erosion(mask, np.ones((3, 3), bool), iterations=width, border_value=0)
    np.testing.assert_array_equal(boundary_pixels(mask, width), mask & ~eroded)


def test_label_map_boundary_iou_averages_classes():
    gt = _square(20, 5, 5, 10).astype(np.int64)
    pred = _square(20, 5, 6, 10).astype(np.int64)
    assert boundary_iou(gt, gt) == 1.0
    assert 0.0 < boundary_iou(gt, pred) < 1.0


def test_label_map_boundary_iou_leaves_out_ignored_pixels():
    gt = _square(20, 5, 5, 10).astype(np.int64)
    gt[:3, :3] = 255
    pred = _square(20, 5, 5, 10).astype(np.int64)
    pred[:3, :3] = 1  # disagreement only where gt is ignored
    assert boundary_iou(gt, pred) == 1.0
    assert boundary_iou(gt, pred, ignore_index=None) < 1.0


def test_label_map_boundary_iou_nan_without_classes():
    assert math.isnan(boundary_iou(np.full((3, 3), 255), np.zeros((3, 3), int)))


def test_accumulator_summed_differs_from_mean_of_images():
    acc = DatasetIoUAccumulator(num_classes=2)
    # Image A: IoU0 = 3/4, IoU1 = 0 -> mIoU 3/8. Image B: IoU1 = 1, class 0 absent -> mIoU 1.
    acc.add(np.array([[0, 0, 0, 0]]), np.array([[0, 0, 0, 1]]))
    acc.add(np.array([[1, 1]]), np.array([[1, 1]]))
    assert acc.mean_of_images() == pytest.approx((3 / 8 + 1) / 2)
    # Summed cm [[3, 1], [0, 2]]: IoU0 = 3/4, IoU1 = 2/3.
    assert acc.summed().miou == pytest.approx((3 / 4 + 2 / 3) / 2)
    assert acc.image_mious == pytest.approx([3 / 8, 1.0])


def test_accumulator_skips_nan_images():
    acc = DatasetIoUAccumulator(num_classes=2)
    acc.add(np.array([[255]]), np.array([[0]]))
    acc.add(np.array([[0]]), np.array([[0]]))
    assert acc.num_images == 2
    assert acc.mean_of_images() == 1.0


def test_accumulator_add_confusion_sums():
    acc = DatasetIoUAccumulator(num_classes=2)
    acc.add_confusion(np.array([[3, 1], [0, 0]]))
    acc.add_confusion(np.array([[0, 0], [0, 2]]), missed=np.array([0, 1]))
    np.testing.assert_array_equal(acc.confusion, [[3, 1], [0, 2]])
    assert acc.summed().per_class_iou[1] == pytest.approx(2 / 4)


def test_empty_accumulator_is_nan():
    acc = DatasetIoUAccumulator(num_classes=2)
    assert math.isnan(acc.mean_of_images())
    assert math.isnan(acc.summed().miou)


def test_label_map_boundary_iou_is_mean_of_binary_per_class():
    rng = np.random.default_rng(3)
    gt = np.kron(rng.integers(0, 4, (5, 6)), np.ones((7, 7), dtype=np.int64))
    pred = np.roll(gt, 2, axis=1)
    pred[rng.random(pred.shape) < 0.05] = 4
    expected = np.mean([binary_boundary_iou(gt == c, pred == c, 0.05) for c in range(5)])
    assert boundary_iou(gt, pred, dilation_ratio=0.05) == pytest.approx(expected)


def test_label_map_boundary_iou_with_sparse_large_ids():
    gt = _square(20, 5, 5, 10).astype(np.int64) * 10_000_000
    pred = _square(20, 5, 6, 10).astype(np.int64) * 10_000_000
    small = boundary_iou(gt // 10_000_000, pred // 10_000_000)
    assert boundary_iou(gt, pred) == pytest.approx(small)
