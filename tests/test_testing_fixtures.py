"""Synthetic scenes and degraded predictions behave as the tests of other modules assume."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from samseg_core.testing import degrade_prediction, make_scene, make_scenes, write_scene_images

SEEDS = [0, 1, 7]


def _miou(gt: np.ndarray, pred: np.ndarray) -> float:
    classes = np.union1d(np.unique(gt), np.unique(pred))
    ious = [((gt == c) & (pred == c)).sum() / ((gt == c) | (pred == c)).sum() for c in classes]
    return float(np.mean(ious))


def _kind(scene, kind):
    matches = [inst for inst in scene.instances if inst.kind == kind]
    assert len(matches) == 1, f"expected one {kind!r} instance, got {len(matches)}"
    return matches[0]


def test_scene_is_deterministic_for_a_seed():
    a, b = make_scene(3), make_scene(3)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.semantic, b.semantic)
    assert [(i.class_id, i.kind) for i in a.instances] == [(i.class_id, i.kind) for i in b.instances]


def test_scenes_differ_between_seeds():
    assert not np.array_equal(make_scene(0).semantic, make_scene(1).semantic)


def test_scene_shapes_and_types():
    scene = make_scene(0, size=(128, 160), num_classes=6)
    assert scene.image.shape == (128, 160, 3) and scene.image.dtype == np.uint8
    assert scene.semantic.shape == (128, 160) and scene.semantic.dtype == np.int32
    assert set(np.unique(scene.semantic)) <= set(scene.class_names)
    assert scene.class_names[0] == "background" and len(scene.class_names) == 6


@pytest.mark.parametrize("seed", SEEDS)
def test_instances_are_disjoint_and_agree_with_ground_truth(seed):
    scene = make_scene(seed)
    coverage = np.zeros(scene.semantic.shape, int)
    for inst in scene.instances:
        assert inst.area > 0
        assert (scene.semantic[inst.mask] == inst.class_id).all()
        coverage += inst.mask
    assert coverage.max() == 1
    things = np.isin(scene.semantic, scene.thing_classes)
    np.testing.assert_array_equal(coverage.astype(bool), things)


@pytest.mark.parametrize("seed", SEEDS)
def test_scene_has_several_objects_per_thing_class(seed):
    scene = make_scene(seed)
    for cls in scene.thing_classes:
        assert sum(inst.class_id == cls for inst in scene.instances) >= 2


@pytest.mark.parametrize("seed", SEEDS)
def test_scene_has_stuff_bands(seed):
    scene = make_scene(seed)
    assert (scene.semantic[0] == 1).mean() > 0.5  # sky along the top row
    assert (scene.semantic[-1] == 2).mean() > 0.5  # ground along the bottom row


@pytest.mark.parametrize("seed", SEEDS)
def test_occluded_object_is_partly_covered_by_a_later_one(seed):
    scene = make_scene(seed)
    occluded, occluder = _kind(scene, "occluded"), _kind(scene, "occluder")
    filled = ndimage.binary_fill_holes(occluded.mask)
    dilated = ndimage.binary_dilation(occluded.mask)
    assert occluded.area > 20
    assert (dilated & occluder.mask).any()
    assert filled.sum() == occluded.area  # the cut is on the outline, not a hole


@pytest.mark.parametrize("seed", SEEDS)
def test_ring_has_a_hole(seed):
    ring = _kind(make_scene(seed), "ring")
    assert ndimage.binary_fill_holes(ring.mask).sum() > ring.area + 50


@pytest.mark.parametrize("seed", SEEDS)
def test_scene_has_a_small_and_a_thin_object(seed):
    scene = make_scene(seed)
    assert _kind(scene, "small").area <= 30
    thin = _kind(scene, "thin").mask
    assert thin.sum() > 40
    assert not ndimage.binary_erosion(thin, iterations=2).any()  # at most ~4 px wide


def test_class_colours_separate_the_classes():
    scene = make_scene(0)
    means = np.array([scene.image[scene.semantic == c].mean(0) for c in np.unique(scene.semantic)])
    distances = np.linalg.norm(means[:, None] - means[None], axis=-1)
    assert distances[~np.eye(len(means), dtype=bool)].min() > 40


def test_make_scenes_uses_consecutive_seeds():
    scenes = make_scenes(3, seed=5)
    assert [s.seed for s in scenes] == [5, 6, 7]
    np.testing.assert_array_equal(scenes[1].image, make_scene(6).image)


@pytest.mark.parametrize("seed", SEEDS)
def test_degraded_prediction_lowers_miou_but_keeps_most_pixels(seed):
    scene = make_scene(seed)
    pred = degrade_prediction(scene, seed=seed)
    assert pred.shape == scene.semantic.shape and pred.dtype == np.int32
    assert _miou(scene.semantic, pred) < 0.92
    assert (pred == scene.semantic).mean() > 0.7


def test_degraded_prediction_is_deterministic():
    scene = make_scene(2)
    np.testing.assert_array_equal(degrade_prediction(scene, seed=4), degrade_prediction(scene, seed=4))


def test_missing_instances_become_background_and_lower_miou():
    scene = make_scene(0)
    base = degrade_prediction(scene, seed=0, blur_radius=0)
    missing = degrade_prediction(scene, seed=0, blur_radius=0, missing_instances=3)
    assert (base == scene.semantic).all()
    dropped = [inst for inst in scene.instances if (missing[inst.mask] == 0).all()]
    assert len(dropped) == 3
    assert _miou(scene.semantic, missing) < _miou(scene.semantic, base)


def test_drop_small_removes_small_regions():
    scene = make_scene(0)
    small = [inst for inst in scene.instances if inst.kind == "small"][0]
    pred = degrade_prediction(scene, blur_radius=0, drop_small_below=30)
    assert (pred[small.mask] == 0).all()


def test_merge_neighbors_joins_nearby_objects_of_one_class():
    labels = np.zeros((40, 60), np.int32)
    labels[10:30, 5:25] = 3
    labels[10:30, 29:49] = 3  # a 4 px gap
    merged = degrade_prediction(labels, blur_radius=0, merge_neighbors=True)
    assert ndimage.label(labels == 3)[1] == 2
    assert ndimage.label(merged == 3)[1] == 1


def test_degrade_prediction_accepts_a_label_map():
    scene = make_scene(1)
    pred = degrade_prediction(scene.semantic, seed=1, missing_instances=1)
    assert pred.shape == scene.semantic.shape
    assert _miou(scene.semantic, pred) < 1.0


def test_write_scene_images_round_trips_rgb(tmp_path):
    scenes = make_scenes(2)
    paths = write_scene_images(scenes, tmp_path / "images")
    assert [p.name for p in paths] == ["scene_0000.png", "scene_0001.png"]
    np.testing.assert_array_equal(np.asarray(Image.open(paths[1]).convert("RGB")), scenes[1].image)
