"""Semantic voting: equal to SSA's per-mask loop, deterministic ties, the no-harm rule, and a gain on scenes."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from samseg_core.mask_runs import runs_from_coco_rles, runs_from_dense
from samseg_core.masks import rle_encode
from samseg_core.metrics import segmentation_scores
from samseg_core.testing import degrade_prediction, make_scene
from samseg_core.testing.reference_voting import vote_per_mask_reference
from samseg_core.voting import vote_masks


def random_case(
    seed: int, num_masks: int = 14, shape: tuple[int, int] = (23, 37), classes: int = 5, smooth: bool = False
):
    """Random ellipses (some nested in others, one duplicated, two empty, one ragged) over random classes.

    ``smooth``: the baseline is 6x6 blocks of one class each (so some masks agree with it), else pixel noise.
    """
    rng = np.random.default_rng(seed)
    height, width = shape
    yy, xx = np.mgrid[:height, :width]
    masks = np.zeros((num_masks, height, width), bool)
    for i in range(2, num_masks):
        if i % 3 == 0:  # nested: inside the previous mask
            inner = np.argwhere(masks[i - 1])
            cy, cx = inner[len(inner) // 2] if len(inner) else (height / 2, width / 2)
            ry, rx = rng.uniform(0.5, 3, 2)
        else:
            cy, cx = rng.uniform(0, height), rng.uniform(0, width)
            ry, rx = rng.uniform(1, height / 2), rng.uniform(1, width / 2)
        masks[i] = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
    masks[4] = masks[5]  # equal areas: painting order falls back to the mask index
    masks[-1] |= rng.random(shape) < 0.1  # ragged: many short runs
    baseline = rng.integers(0, classes, shape)
    if smooth:
        blocks = rng.integers(0, classes, (height // 6 + 1, width // 6 + 1))
        baseline = np.repeat(np.repeat(blocks, 6, axis=0), 6, axis=1)[:height, :width]
    return masks[rng.permutation(num_masks)], baseline


def assert_same_result(fast, slow):
    assert np.array_equal(fast.semantic, slow.semantic)
    assert np.array_equal(fast.mask_classes, slow.mask_classes)
    assert np.array_equal(fast.topk_classes, slow.topk_classes)
    assert np.array_equal(fast.topk_shares, slow.topk_shares)
    assert np.array_equal(fast.vote_share, slow.vote_share, equal_nan=True)
    assert np.array_equal(fast.accepted, slow.accepted)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("mode", ["plurality", "no_harm"])
def test_equals_per_mask_reference_on_random_masks(seed, mode):
    masks, baseline = random_case(seed)

    fast = vote_masks(masks, baseline, mode=mode, min_vote_share=0.4)
    slow = vote_per_mask_reference(masks, baseline, mode=mode, min_vote_share=0.4)

    assert_same_result(fast, slow)
    assert (masks.sum(axis=0) == 0).any() and (
        masks.sum(axis=(1, 2)) == 0
    ).any()  # uncovered pixels, empty masks


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("mode", ["plurality", "no_harm"])
def test_equals_reference_with_confidence_and_probabilities(seed, mode):
    masks, baseline = random_case(seed, classes=3)
    rng = np.random.default_rng(seed)
    confidence = rng.integers(0, 3, baseline.shape) / 2  # few distinct values: many equal means
    probabilities = rng.random((3, 7, 11))

    fast = vote_masks(masks, baseline, mode=mode, confidence=confidence, probabilities=probabilities)
    slow = vote_per_mask_reference(
        masks, baseline, mode=mode, confidence=confidence, probabilities=probabilities
    )

    assert_same_result(fast, slow)


def test_large_sparse_class_ids_are_voted_like_small_ones():
    masks, baseline = random_case(5, classes=3)
    sparse = np.array([7, 255, 60000])[baseline]  # e.g. an "ignore" id and panoptic-style ids

    fast = vote_masks(masks, sparse)

    assert_same_result(fast, vote_per_mask_reference(masks, sparse))
    assert set(np.unique(fast.semantic)) <= {7, 255, 60000}


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("mode", ["plurality", "no_harm"])
def test_ignored_pixels_cast_no_vote_as_in_the_reference(seed, mode):
    masks, baseline = random_case(seed, classes=4, smooth=seed % 2 == 1)
    baseline = np.where(baseline == 3, 255, baseline)  # a quarter of the pixels are "no class"
    baseline[:, :5] = 255  # and some masks lie entirely in it
    confidence = np.random.default_rng(seed).random(baseline.shape)

    fast = vote_masks(masks, baseline, mode=mode, min_vote_share=0.4, confidence=confidence, ignore_index=255)
    slow = vote_per_mask_reference(
        masks, baseline, mode=mode, min_vote_share=0.4, confidence=confidence, ignore_index=255
    )

    assert_same_result(fast, slow)
    assert 255 not in fast.mask_classes and 255 not in fast.topk_classes
    assert (baseline[fast.semantic == 255] == 255).all()  # 255 only stays, never spreads
    with_ignore_as_class = vote_masks(masks, baseline, mode=mode, min_vote_share=0.4, confidence=confidence)
    assert 255 in with_ignore_as_class.mask_classes  # without ignore_index the test would see the defect


def test_coco_rle_input_gives_the_dense_result():
    masks, baseline = random_case(7)

    from_rle = vote_masks([rle_encode(m) for m in masks], baseline)

    assert_same_result(from_rle, vote_masks(masks, baseline))


@pytest.mark.parametrize("shape", [(5, 7), (8, 8), (1, 3), (3, 1)])
def test_runs_reproduce_the_masks(shape):
    rng = np.random.default_rng(0)
    masks = rng.random((6, *shape)) < 0.5
    masks[0] = True  # a run through the end of one mask into the next one's start
    masks[1, 0, 0] = True

    assert np.array_equal(runs_from_dense(masks).to_dense(), masks)
    assert np.array_equal(runs_from_coco_rles([rle_encode(m) for m in masks]).to_dense(), masks)


def test_gpu_scan_finds_the_runs_of_the_cpu_scan():
    import torch

    from samseg_core.mask_runs import _boundaries_torch

    masks, _ = random_case(3)
    flat = masks.reshape(-1)

    starts, ends = _boundaries_torch(torch.from_numpy(flat))  # the CUDA code path, run on CPU here

    step = np.diff(np.concatenate([[0], flat.astype(np.int8), [0]]))
    assert np.array_equal(starts, np.flatnonzero(step == 1)) and np.array_equal(
        ends, np.flatnonzero(step == -1)
    )


def test_smaller_mask_wins_the_overlap():
    baseline = np.zeros((4, 6), int)
    baseline[:, 3:] = 1
    big = np.ones((4, 6), bool)  # plurality 0 (tie 12:12 goes to the lower id)
    small = np.zeros((4, 6), bool)
    small[:, 4:] = True  # all class 1

    result = vote_masks(np.stack([small, big]), baseline)

    assert result.mask_classes.tolist() == [1, 0]
    assert (result.semantic[:, 4:] == 1).all() and (result.semantic[:, :4] == 0).all()


def test_uncovered_pixels_keep_the_baseline():
    baseline = np.arange(12).reshape(3, 4) % 3
    mask = np.zeros((1, 3, 4), bool)
    mask[0, 0, :2] = True

    result = vote_masks(mask, baseline)

    assert np.array_equal(result.semantic[1:], baseline[1:])
    assert np.array_equal(result.semantic[0, 2:], baseline[0, 2:])


def test_empty_masks_are_skipped():
    baseline = np.array([[2, 2], [1, 2]])
    masks = np.zeros((2, 2, 2), bool)
    masks[1] = True

    result = vote_masks(masks, baseline)

    assert result.mask_classes.tolist() == [-1, 2]
    assert np.isnan(result.vote_share[0]) and not result.accepted[0]
    assert result.topk_classes[0].tolist() == [-1, -1, -1]


def test_vote_tie_goes_to_the_lower_class_id():
    baseline = np.array([[3, 3, 1, 1]])

    result = vote_masks(np.ones((1, 1, 4), bool), baseline)

    assert result.mask_classes.tolist() == [1]
    assert result.topk_classes[0].tolist() == [1, 3, -1]


def test_vote_tie_goes_to_the_higher_mean_confidence():
    baseline = np.array([[3, 3, 1, 1]])
    confidence = np.array([[0.9, 0.8, 0.6, 0.7]])

    result = vote_masks(np.ones((1, 1, 4), bool), baseline, confidence=confidence)

    assert result.mask_classes.tolist() == [3]


def test_vote_tie_uses_mean_probability_without_confidence():
    baseline = np.array([[3, 3, 1, 1]])
    probabilities = np.zeros((4, 1, 1))
    probabilities[1] = 0.6  # class 1 is more probable everywhere
    probabilities[3] = 0.4

    result = vote_masks(np.ones((1, 1, 4), bool), baseline, probabilities=probabilities)

    assert result.mask_classes.tolist() == [1]


def test_vote_share_and_topk_record_the_counts():
    baseline = np.array([[0, 0, 0, 2, 2, 1]])

    result = vote_masks(np.ones((1, 1, 6), bool), baseline, topk=2)

    assert result.topk_classes[0].tolist() == [0, 2]
    assert result.topk_shares[0].tolist() == pytest.approx([0.5, 1 / 3])
    assert result.vote_share[0] == pytest.approx(0.5)


def owner_map(masks: np.ndarray) -> np.ndarray:
    """The smallest mask covering each pixel (equal areas: higher index), -1 if none: SSA's painting order."""
    owner = np.full(masks.shape[1:], -1)
    areas = masks.sum(axis=(1, 2))
    for i in np.argsort(-areas, kind="stable"):
        owner[masks[i]] = i
    return owner


@pytest.mark.parametrize("seed", range(4))
def test_no_harm_never_changes_a_pixel_owned_by_a_rejected_mask(seed):
    masks, baseline = random_case(seed, classes=3, smooth=True)

    result = vote_masks(masks, baseline, mode="no_harm", min_vote_share=0.6)

    owner = owner_map(masks)
    rejected_pixels = (owner >= 0) & ~result.accepted[np.maximum(owner, 0)]
    assert rejected_pixels.any() and result.accepted.any()
    assert np.array_equal(result.semantic[rejected_pixels], baseline[rejected_pixels])


def test_no_harm_relabels_only_masks_reaching_the_threshold():
    baseline = np.array([[0, 0, 0, 1, 1, 1, 1, 1, 2, 2]])
    masks = np.zeros((2, 1, 10), bool)
    masks[0, 0, :4] = True  # 3/4 class 0
    masks[1, 0, 4:] = True  # 4/6 class 1

    result = vote_masks(masks, baseline, mode="no_harm", min_vote_share=0.7)

    assert result.accepted.tolist() == [True, False]
    assert result.semantic.tolist() == [[0, 0, 0, 0, 1, 1, 1, 1, 2, 2]]


def test_no_harm_soft_vote_follows_mean_probability():
    baseline = np.array([[0, 0, 0, 1]])  # hard plurality: class 0
    probabilities = np.zeros((2, 1, 4))
    probabilities[0] = [[0.5, 0.5, 0.5, 0.0]]  # class 0 barely wins its pixels
    probabilities[1] = [[0.5, 0.5, 0.5, 1.0]]  # class 1 is as likely there and sure of the last pixel

    result = vote_masks(np.ones((1, 1, 4), bool), baseline, mode="no_harm", probabilities=probabilities)

    assert result.soft and result.mask_classes.tolist() == [1]
    assert result.vote_share[0] == pytest.approx(0.625)


def scene_masks(scene) -> np.ndarray:
    """Ground-truth-derived proposals: every object instance plus each connected stuff region."""
    masks = [inst.mask for inst in scene.instances]
    for stuff in scene.stuff_classes:
        regions, count = ndimage.label(scene.semantic == stuff)
        masks.extend(regions == k for k in range(1, count + 1))
    return np.stack(masks)


def test_voting_over_ground_truth_masks_raises_miou_of_a_degraded_baseline():
    before, after = [], []
    for seed in range(3):
        scene = make_scene(seed)
        baseline = degrade_prediction(scene, seed=seed, blur_radius=4)
        classes = len(scene.class_names)

        voted = vote_masks(scene_masks(scene), baseline)

        before.append(segmentation_scores(scene.semantic, baseline, classes).miou)
        after.append(segmentation_scores(scene.semantic, voted.semantic, classes).miou)
    assert np.mean(after) > np.mean(before) + 0.02


def test_shapes_must_agree():
    with pytest.raises(ValueError, match="baseline has shape"):
        vote_masks(np.zeros((1, 3, 4), bool), np.zeros((4, 3), int))
