"""Tests for samseg_core.masks: RLE, boxes, connected components, nearest resizing, stacking."""

from __future__ import annotations

import json

import numpy as np
import pytest

from samseg_core.masks import (
    box_xyxy_to_xywh,
    connected_components,
    mask_to_box_xyxy,
    masks_to_boxes_xyxy,
    resize_mask_nearest,
    rle_area,
    rle_decode,
    rle_encode,
    stack_masks,
)


@pytest.mark.parametrize("seed", range(5))
def test_rle_round_trip_random(seed):
    rng = np.random.default_rng(seed)
    mask = rng.random((int(rng.integers(1, 40)), int(rng.integers(1, 40)))) < 0.4
    np.testing.assert_array_equal(rle_decode(rle_encode(mask)), mask)


@pytest.mark.parametrize("fill", [False, True])
def test_rle_round_trip_empty_and_full(fill):
    mask = np.full((7, 5), fill)
    decoded = rle_decode(rle_encode(mask))
    assert decoded.dtype == bool
    np.testing.assert_array_equal(decoded, mask)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_rle_decode_matches_pycocotools_on_large_mask():
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(7)
    mask = rng.random((300, 200)) < rng.random((300, 1))  # varied run lengths, incl. long ones
    rle = rle_encode(mask)
    expected = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool)
    np.testing.assert_array_equal(rle_decode(rle), expected)


def test_rle_counts_not_covering_mask_raise():
    with pytest.raises(ValueError, match="do not cover"):
        rle_decode({"size": [2, 3], "counts": [1, 2]})


def test_rle_encode_is_json_serialisable():
    rle = rle_encode(np.eye(4, dtype=bool))
    assert json.loads(json.dumps(rle)) == rle
    assert rle["size"] == [4, 4]


def test_rle_decode_accepts_bytes_counts():
    mask = np.eye(5, dtype=bool)
    rle = rle_encode(mask)
    np.testing.assert_array_equal(rle_decode({"size": rle["size"], "counts": rle["counts"].encode()}), mask)


def test_rle_decode_accepts_uncompressed_counts():
    # Column-major runs over a 2x3 mask: 1 zero, 2 ones, 3 zeros.
    decoded = rle_decode({"size": [2, 3], "counts": [1, 2, 3]})
    np.testing.assert_array_equal(decoded, [[False, True, False], [True, False, False]])


def test_rle_area_counts_foreground():
    mask = np.zeros((6, 6), dtype=bool)
    mask[1:3, 2:5] = True
    assert rle_area(rle_encode(mask)) == 6
    assert rle_area({"size": [2, 3], "counts": [1, 2, 3]}) == 2


def test_boxes_inclusive_max_indices():
    masks = np.zeros((1, 5, 6), dtype=bool)
    masks[0, 1:4, 2:6] = True
    np.testing.assert_array_equal(masks_to_boxes_xyxy(masks), [[2, 1, 5, 3]])


def test_boxes_empty_mask_is_zeros():
    masks = np.zeros((2, 4, 4), dtype=bool)
    masks[1, 3, 3] = True
    boxes = masks_to_boxes_xyxy(masks)
    assert boxes.dtype == np.int64
    np.testing.assert_array_equal(boxes, [[0, 0, 0, 0], [3, 3, 3, 3]])


def test_boxes_of_no_masks_has_shape_0x4():
    assert masks_to_boxes_xyxy(np.zeros((0, 3, 3), dtype=bool)).shape == (0, 4)


def test_single_pixel_box_and_xywh():
    mask = np.zeros((4, 5), dtype=bool)
    mask[2, 1] = True
    box = mask_to_box_xyxy(mask)
    np.testing.assert_array_equal(box, [1, 2, 1, 2])
    np.testing.assert_array_equal(box_xyxy_to_xywh(box), [1, 2, 1, 1])


def test_xywh_width_is_inclusive_span():
    np.testing.assert_array_equal(box_xyxy_to_xywh([[2, 1, 5, 3]]), [[2, 1, 4, 3]])


def test_components_two_blobs_ordered_by_area():
    mask = np.zeros((5, 8), dtype=bool)
    mask[0, 0] = True  # first in raster order, area 1
    mask[2:5, 4:8] = True  # area 12
    labels, n = connected_components(mask)
    assert n == 2
    assert labels.dtype == np.int32
    assert labels[3, 5] == 1
    assert labels[0, 0] == 2
    assert labels[1, 1] == 0


def test_components_ties_broken_by_first_pixel():
    mask = np.zeros((3, 5), dtype=bool)
    mask[2, 0:2] = True  # area 2, starts later
    mask[0, 3:5] = True  # area 2, starts first
    labels, _ = connected_components(mask)
    assert labels[0, 3] == 1
    assert labels[2, 0] == 2


def test_components_min_area_removes_and_renumbers():
    mask = np.zeros((6, 6), dtype=bool)
    mask[0, 0] = True  # area 1: removed
    mask[2:4, 2:4] = True  # area 4
    mask[5, 0:3] = True  # area 3
    labels, n = connected_components(mask, min_area=3)
    assert n == 2
    assert labels[0, 0] == 0
    assert labels[2, 2] == 1
    assert labels[5, 0] == 2
    assert set(np.unique(labels)) == {0, 1, 2}


def test_components_diagonal_joined_with_8_split_with_4():
    mask = np.eye(3, dtype=bool)
    assert connected_components(mask, connectivity=8)[1] == 1
    assert connected_components(mask, connectivity=4)[1] == 3


def test_components_empty_mask():
    labels, n = connected_components(np.zeros((2, 2), dtype=bool))
    assert n == 0
    assert not labels.any()


def test_resize_nearest_exact_2x_upscale():
    mask = np.array([[1, 2], [3, 4]], dtype=np.uint8)
    out = resize_mask_nearest(mask, (4, 4))
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.kron(mask, np.ones((2, 2), dtype=np.uint8)))


def test_resize_nearest_keeps_bool_and_batch_dims():
    masks = np.zeros((2, 2, 3), dtype=bool)
    masks[1, 0, 2] = True
    out = resize_mask_nearest(masks, (4, 6))
    assert out.dtype == bool
    assert out.shape == (2, 4, 6)
    assert out[1, :2, 4:].all()
    assert out.sum() == 4


def test_resize_nearest_downscale_samples_inside_input():
    mask = np.arange(12, dtype=np.int32).reshape(3, 4)
    out = resize_mask_nearest(mask, (1, 2))
    np.testing.assert_array_equal(out, [[5, 7]])


def test_stack_masks_bool():
    stacked = stack_masks([np.eye(2, dtype=np.uint8), np.ones((2, 2), dtype=np.uint8)])
    assert stacked.dtype == bool
    assert stacked.shape == (2, 2, 2)


def test_stack_empty_needs_shape():
    assert stack_masks([], shape=(3, 4)).shape == (0, 3, 4)
    with pytest.raises(ValueError, match="shape"):
        stack_masks([])


def test_stack_mismatched_shapes_raises():
    with pytest.raises(ValueError, match="one shape"):
        stack_masks([np.zeros((2, 2)), np.zeros((2, 3))])
