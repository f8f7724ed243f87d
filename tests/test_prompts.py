"""Prompt geometry on hand-made masks: points, boxes, loose boxes, extreme points, mask prompts.

No model is involved: every expected value follows from the mask drawn in the test.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from samseg_core.prompts import (
    extreme_points,
    loose_box,
    mask_prompt,
    multiple_points,
    normalize_prompts,
    prompt_sets_from_semantic,
    single_point,
    tight_box,
)


def _rect(shape, y0, y1, x0, x1):
    mask = np.zeros(shape, dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def _c_shape():
    mask = np.zeros((30, 40), dtype=bool)
    mask[5:25, 5:12] = True  # thick vertical bar
    mask[5:9, 5:35] = True  # thin top arm
    mask[21:25, 5:35] = True  # thin bottom arm
    return mask


def _ring():
    yy, xx = np.mgrid[:41, :41]
    radius = np.hypot(yy - 20, xx - 20)
    return (radius >= 10) & (radius <= 16)


def _depth(mask):
    return ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]


def _at(mask, point):
    x, y = (int(v) for v in np.asarray(point).reshape(2))
    return bool(mask[y, x])


def test_tight_box_is_inclusive_xyxy():
    mask = _rect((20, 30), 3, 8, 10, 25)

    assert tight_box(mask).tolist() == [10, 3, 24, 7]


def test_loose_box_moves_each_side_by_margin_times_box_size():
    mask = _rect((100, 100), 40, 50, 30, 50)  # 20 wide, 10 high

    assert loose_box(mask, margin=0.5).tolist() == [20.0, 35.0, 59.0, 54.0]


def test_loose_box_is_clipped_to_the_image():
    mask = _rect((20, 30), 0, 10, 20, 30)  # touches the top and right borders

    box = loose_box(mask, margin=0.2)

    assert box[1] == 0 and box[2] == 29  # clipped
    assert box[0] == pytest.approx(20 - 0.2 * 10) and box[3] == pytest.approx(9 + 0.2 * 10)


def test_extreme_points_are_top_bottom_left_right_with_middle_of_ties():
    mask = np.zeros((20, 20), dtype=bool)
    mask[2, 6:11] = True  # top row: x 6..10, middle 8
    mask[3:15, 4:13] = True
    mask[15, 9] = True  # single bottom pixel

    top, bottom, left, right = extreme_points(mask).tolist()

    assert top == [8, 2] and bottom == [9, 15]
    assert left == [4, 8] and right == [12, 8]  # left column rows 3..14, lower median 8


def test_single_point_of_a_convex_region_is_its_centroid():
    mask = _rect((20, 30), 2, 9, 4, 15)  # centroid (9, 5)

    assert single_point(mask).tolist() == [[9.0, 5.0]]


def test_single_point_of_a_c_shape_lies_deep_inside_the_region():
    mask = _c_shape()
    ys, xs = np.nonzero(mask)
    assert not mask[int(round(ys.mean())), int(round(xs.mean()))]  # the centroid itself falls outside

    point = single_point(mask)

    assert _at(mask, point)
    assert _depth(mask)[int(point[0, 1]), int(point[0, 0])] == _depth(mask).max()


def test_single_point_of_a_ring_lies_on_the_ring_not_in_the_hole():
    mask = _ring()

    point = single_point(mask)

    assert _at(mask, point)
    assert (
        _depth(mask)[int(point[0, 1]), int(point[0, 0])] >= _depth(mask).max() - 0.5
    )  # mid-band, off the edge


def test_single_point_comes_from_the_largest_region():
    mask = _rect((30, 30), 0, 4, 0, 4) | _rect((30, 30), 10, 29, 10, 29)

    assert single_point(mask).tolist() == [[19.0, 19.0]]


def test_multiple_points_give_one_point_per_large_enough_region_largest_first():
    mask = _rect((40, 40), 0, 3, 0, 3) | _rect((40, 40), 10, 20, 10, 20) | _rect((40, 40), 30, 35, 30, 35)

    points = multiple_points(mask, min_area=20)

    assert points.tolist() == [[14.0, 14.0], [32.0, 32.0]]  # the 9-pixel square gets none
    assert all(_at(mask, p) for p in points)


def test_multiple_points_keep_the_largest_region_when_all_are_small():
    mask = _rect((20, 20), 0, 2, 0, 2) | _rect((20, 20), 10, 13, 10, 13)

    assert multiple_points(mask, min_area=100).tolist() == [[11.0, 11.0]]


def test_class_granularity_gives_one_prompt_set_spanning_all_regions_of_a_class():
    semantic = np.zeros((30, 40), dtype=np.int64)
    semantic[2:8, 2:8] = 3
    semantic[20:28, 25:38] = 3

    (background, cls) = prompt_sets_from_semantic(semantic, ("points", "box"), "class", min_region_area=1)

    assert (background.class_id, cls.class_id) == (0, 3)
    assert cls.box.tolist() == [2, 2, 37, 27]  # one box over both objects: the study's failure case
    assert len(cls.points) == 2 and np.array_equal(cls.region_mask, semantic == 3)


def test_region_granularity_gives_one_prompt_set_per_connected_region():
    semantic = np.zeros((30, 40), dtype=np.int64)
    semantic[2:8, 2:8] = 3
    semantic[20:28, 25:38] = 3

    sets = [s for s in prompt_sets_from_semantic(semantic, ("points", "box"), "region") if s.class_id == 3]

    assert [s.box.tolist() for s in sets] == [[25, 20, 37, 27], [2, 2, 7, 7]]  # larger region first
    assert [len(s.points) for s in sets] == [1, 1]
    assert all(_at(s.region_mask, s.points[0]) and s.region_mask.sum() in (36, 104) for s in sets)


def test_region_granularity_skips_regions_below_min_area():
    semantic = np.zeros((20, 20), dtype=np.int64)
    semantic[1:3, 1:3] = 5
    semantic[10:18, 10:18] = 5

    sets = prompt_sets_from_semantic(semantic, ("box",), "region", min_region_area=10, ignore_classes=(0,))

    assert [s.region_mask.sum() for s in sets] == [64]


def test_ignored_classes_get_no_prompts():
    semantic = np.full((10, 10), 255, dtype=np.int64)
    semantic[:5] = 1

    sets = prompt_sets_from_semantic(semantic, ("box",), ignore_classes=(255,))

    assert [s.class_id for s in sets] == [1]


def test_combined_prompts_concatenate_points_and_keep_one_box():
    semantic = _c_shape().astype(np.int64)

    (cls,) = prompt_sets_from_semantic(
        semantic, ("points", "extreme_points", "loose_box", "mask"), ignore_classes=(0,)
    )

    assert cls.points.shape == (5, 2) and cls.point_labels.tolist() == [1] * 5
    assert cls.box is not None and cls.mask_input is not None
    assert all(_at(cls.region_mask, p) for p in cls.points)


def test_mask_prompt_has_sams_low_res_shape():
    mask = _rect((50, 100), 10, 40, 10, 90)

    assert mask_prompt(mask, encoder_size=1024).shape == (256, 256)
    assert mask_prompt(mask, encoder_size=256).shape == (64, 64)


def test_mask_prompt_is_in_sams_padded_frame_and_maps_back_onto_the_mask():
    mask = np.zeros((50, 100), dtype=bool)  # wide: SAM pads rows at the bottom
    mask[5:45, 10:60] = True
    prompt = mask_prompt(mask, encoder_size=256, mask_logit=4.0)

    assert set(np.unique(prompt)) == {-4.0, 4.0}
    assert (prompt[32:] < 0).all()  # input frame 128x256 of 256x256: low-res rows 32.. are padding
    assert (prompt[:, 37] > 0).any() and (prompt[:, 38:] < 0).all()  # mask columns end at 59/100*64 = 37.8
    # SAM's postprocess_masks: upscale to the encoder frame, crop the padding, resize to the image.
    up = F.interpolate(torch.from_numpy(prompt)[None, None], (256, 256), mode="bilinear", align_corners=False)
    back = F.interpolate(up[..., :128, :256], (50, 100), mode="bilinear", align_corners=False)[0, 0] > 0
    iou = (back.numpy() & mask).sum() / (back.numpy() | mask).sum()
    assert iou > 0.95


def test_normalize_prompts_parses_strings_and_rejects_two_boxes():
    assert normalize_prompts("box+points") == ("points", "box")
    assert normalize_prompts(["point", "points"]) == ("points",)
    with pytest.raises(ValueError, match="one box"):
        normalize_prompts(("box", "loose_box"))
    with pytest.raises(ValueError, match="unknown"):
        normalize_prompts(("scribble",))
