"""The SAM simulator: each error knob changes its answers as documented, and it works where SAM does.

A simulator, not a model: these tests check the error model and the plumbing, never any real SAM's quality.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from samseg_core.mask_sources import MaskSource
from samseg_core.metrics import IoUOptions, score_masks
from samseg_core.refine import refine_semantic
from samseg_core.runner import SampleItem
from samseg_core.sam_embedding import EmbeddingCache
from samseg_core.testing.sam_simulator import (
    ERROR_PRESETS,
    SimulatedMaskSource,
    SimulatedSam,
    SimulatorErrors,
    make_study_scene,
    make_study_scenes,
    study_baseline,
)
from samseg_core.testing.scenes import Instance, SyntheticScene
from samseg_core.voting import vote_masks

OPTIONS = IoUOptions(known_classes=6)


def _deepest(mask: np.ndarray) -> list[list[float]]:
    """The ``(x, y)`` pixel of a mask farthest from its outside, as one point."""
    y, x = np.unravel_index(np.argmax(ndimage.distance_transform_edt(mask)), mask.shape)
    return [[float(x), float(y)]]


def _tight_box(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max(), ys.max()], np.float32)


def _perimeter(mask: np.ndarray) -> float:
    """Boundary length in px: 4-neighbour edges times pi / 4 (their mean excess over Euclidean length)."""
    edges = np.count_nonzero(mask[:, 1:] != mask[:, :-1]) + np.count_nonzero(mask[1:] != mask[:-1])
    return edges * np.pi / 4


def _scene(objects: list[tuple[int, np.ndarray, tuple[int, int, int]]], shape=(64, 64)) -> SyntheticScene:
    """A hand-made scene: grey background and the given (class, mask, colour) objects, later ones on top."""
    semantic = np.zeros(shape, np.int32)
    image = np.full((*shape, 3), 128, np.uint8)
    instances = []
    for class_id, mask, colour in objects:
        for inst in instances:
            inst.mask &= ~mask
        semantic[mask] = class_id
        image[mask] = colour
        instances.append(Instance(class_id, mask.copy()))
    names = {0: "background", 1: "sky", 2: "ground", 3: "car", 4: "person", 5: "tree"}
    return SyntheticScene(image, semantic, instances, names)


def _disc(cy: float, cx: float, r: float, shape=(64, 64)) -> np.ndarray:
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    return np.hypot(yy - cy, xx - cx) <= r


@pytest.fixture(scope="module")
def scene() -> SyntheticScene:
    return make_study_scene(0)


def _of_kind(scene: SyntheticScene, kind: str) -> list[Instance]:
    return [i for i in scene.instances if i.kind == kind]


# ------------------------------------------------------------------------------------------ zero errors


def test_a_perfect_simulator_answers_a_point_with_the_objects_exact_mask(scene):
    sim = SimulatedSam([scene])

    for inst in scene.instances:
        answer = sim.answer(0, points=_deepest(inst.mask), point_labels=[1])

        assert np.array_equal(answer.masks[1], inst.mask) and np.array_equal(answer.masks, answer.clean)
        assert int(np.argmax(answer.predicted_iou)) == 1 and answer.predicted_iou[1] == 1.0
        assert not (answer.masks[0] & ~inst.mask).any() and not (inst.mask & ~answer.masks[2]).any()


def test_a_perfect_simulator_answers_a_tight_box_with_the_boxed_object(scene):
    sim = SimulatedSam([scene])
    ring = _of_kind(scene, "ring")[0].mask

    answer = sim.answer(0, box=_tight_box(ring))

    assert np.array_equal(answer.masks[1], ring)


def test_a_perfect_mask_source_proposes_exactly_the_regions(scene):
    sim = SimulatedSam([scene])
    regions, _ = sim.regions(0)

    proposals = SimulatedMaskSource(sim).proposals_for(0)

    expected = regions[None] == np.arange(regions.max() + 1)[:, None, None]
    assert np.array_equal(proposals.masks, expected)
    assert np.array_equal(vote_masks(proposals, scene.semantic).semantic, scene.semantic)


# ------------------------------------------------------------------------------------------ each knob


def test_merged_output_is_the_union_of_the_touching_neighbours(scene):
    sim = SimulatedSam([scene])
    first, second = _of_kind(scene, "touching")

    answer = sim.answer(0, points=_deepest(first.mask), point_labels=[1])

    assert np.array_equal(answer.masks[1], first.mask)
    assert np.array_equal(answer.masks[2], first.mask | second.mask)


def test_part_output_is_one_half_of_the_object(scene):
    sim = SimulatedSam([scene])
    ring = _of_kind(scene, "ring")[0].mask

    part = sim.answer(0, points=_deepest(ring), point_labels=[1]).masks[0]

    assert not (part & ~ring).any() and 0.4 < part.sum() / ring.sum() < 0.6


@pytest.mark.parametrize("jitter", [1.0, 2.0, 3.0])
def test_jitter_moves_boundaries_by_about_jitter_px(jitter):
    scenes = make_study_scenes(2, seed=10)
    sim = SimulatedSam(scenes, SimulatorErrors(jitter_px=jitter))
    moved, length = 0.0, 0.0
    for index, scene in enumerate(scenes):
        for inst in scene.instances:
            if inst.area >= 100:
                answer = sim.answer(index, points=_deepest(inst.mask), point_labels=[1])
                moved += np.count_nonzero(answer.masks[1] ^ inst.mask)
                length += _perimeter(inst.mask)

    assert 0.75 * jitter < moved / length < 1.25 * jitter


def test_leakage_grows_masks_into_similar_colour_neighbours_only():
    a, b, c = _disc(32, 20, 10), _disc(32, 39, 10), _disc(12, 50, 8)
    scene = _scene([(3, a, (200, 40, 40)), (4, b, (210, 60, 50)), (5, c, (40, 200, 40))])
    own = scene.instances[0].mask
    clean = SimulatedSam([scene]).answer(0, points=_deepest(own), point_labels=[1]).masks[1]

    leaked = SimulatedSam([scene], SimulatorErrors(leakage_px=2)).answer(
        0, points=_deepest(own), point_labels=[1]
    )

    grown = leaked.masks[1] & ~clean
    distance = ndimage.distance_transform_edt(~own)
    assert grown.any() and (grown <= scene.instances[1].mask).all() and distance[grown].max() <= 2


def test_smoothing_removes_thin_structures_and_small_holes():
    holed = _disc(32, 32, 14) & ~_disc(32, 32, 1.5)
    bar = np.zeros((64, 64), bool)
    bar[5:8, 5:60] = True
    scene = _scene([(3, holed, (200, 40, 40)), (4, bar, (40, 200, 40))])
    sim = SimulatedSam([scene], SimulatorErrors(smoothing_px=2))

    disc_mask = sim.answer(0, points=[[20.0, 32.0]], point_labels=[1]).masks[1]
    bar_mask = sim.answer(0, points=[[30.0, 6.0]], point_labels=[1]).masks[1]

    assert disc_mask[31:34, 31:34].all()  # the hole is filled
    assert bar_mask.sum() < 0.1 * bar.sum()


def test_a_point_near_a_boundary_lands_on_the_neighbour_with_boundary_flip():
    a, b = np.zeros((64, 64), bool), np.zeros((64, 64), bool)
    a[10:50, 10:30], b[10:50, 30:50] = True, True
    scene = _scene([(3, a, (200, 40, 40)), (4, b, (40, 200, 40))])
    near = [[29.0, 30.0]]  # one px left of b

    stays = SimulatedSam([scene], SimulatorErrors(boundary_flip=0.0)).answer(0, near, [1])
    flips = SimulatedSam([scene], SimulatorErrors(boundary_flip=1.0)).answer(0, near, [1])
    hinted = SimulatedSam([scene], SimulatorErrors(boundary_flip=1.0)).answer(0, near, [1], mask_hint=a)

    assert np.array_equal(stays.masks[1], a) and np.array_equal(flips.masks[1], b)
    assert np.array_equal(hinted.masks[1], a)


def test_a_box_holding_several_objects_returns_their_union_with_box_union():
    a, b, c = _disc(12, 12, 6), _disc(50, 50, 6), _disc(30, 30, 5)
    scene = _scene([(3, a, (200, 40, 40)), (3, b, (200, 40, 40)), (4, c, (40, 200, 40))])
    box = _tight_box(a | b)

    needed = SimulatedSam([scene], SimulatorErrors(box_union=0.0)).answer(0, box=box)
    union = SimulatedSam([scene], SimulatorErrors(box_union=1.0)).answer(0, box=box)

    assert np.array_equal(needed.masks[1], a | b)
    assert np.array_equal(union.masks[1], a | b | c)


def test_predicted_iou_tracks_the_true_quality_less_as_score_noise_grows():
    scenes = make_study_scenes(3, seed=20)
    correlations = []
    for noise in (0.0, 0.05, 0.3):
        sim = SimulatedSam(scenes, SimulatorErrors(jitter_px=1.0, score_noise=noise))
        quality, predicted = [], []
        for index, scene in enumerate(scenes):
            for inst in scene.instances:
                answer = sim.answer(index, points=_deepest(inst.mask), point_labels=[1])
                quality.extend(answer.quality)
                predicted.extend(answer.predicted_iou)
        correlations.append(np.corrcoef(quality, predicted)[0, 1])

    assert correlations[0] > 0.9 and correlations[0] > correlations[1] > correlations[2]


def test_wrong_ranking_puts_another_output_first(scene):
    points = [_deepest(inst.mask) for inst in scene.instances]
    right = SimulatedSam([scene], SimulatorErrors(wrong_ranking=0.0))
    wrong = SimulatedSam([scene], SimulatorErrors(wrong_ranking=1.0))

    assert all(np.argmax(right.answer(0, p, [1]).predicted_iou) == 1 for p in points)
    assert all(np.argmax(wrong.answer(0, p, [1]).predicted_iou) != 1 for p in points)


def test_automatic_masks_drop_things_and_merge_touching_groups_as_configured(scene):
    errors = SimulatorErrors(amg_miss_rate=1.0, amg_merge_rate=1.0)
    proposals = SimulatedMaskSource(SimulatedSam([scene], errors)).proposals_for(0)
    first, second = _of_kind(scene, "touching")

    masks = list(proposals.masks)
    assert not any(np.array_equal(m, first.mask) for m in masks)
    assert any(np.array_equal(m, first.mask | second.mask) for m in masks)


# ------------------------------------------------------------------------------------------ determinism


def test_the_same_seed_gives_the_same_answers_whatever_the_batch(scene):
    errors = ERROR_PRESETS["moderate"]
    sim = SimulatedSam([scene], errors, seed=3)
    embeddings = sim.embed([scene.image])
    points = torch.tensor([_deepest(i.mask) for i in scene.instances[:4]], dtype=torch.float32)
    labels = torch.ones(4, 1, dtype=torch.int64)

    batch = sim.decode(embeddings, 0, points=points, point_labels=labels).low_res_logits
    single = sim.decode(embeddings, 0, points=points[2:3], point_labels=labels[2:3]).low_res_logits
    again = SimulatedSam([scene], errors, seed=3).decode(embeddings, 0, points=points, point_labels=labels)
    other = SimulatedSam([scene], errors, seed=4).decode(embeddings, 0, points=points, point_labels=labels)

    assert torch.equal(batch[2:3], single) and torch.equal(batch, again.low_res_logits)
    assert not torch.equal(batch, other.low_res_logits)


def test_an_unregistered_image_is_refused_with_the_remedy(scene):
    with pytest.raises(ValueError, match="register"):
        SimulatedSam([scene]).embed([np.zeros_like(scene.image)])


def test_knobs_are_checked():
    with pytest.raises(ValueError, match="jitter_px"):
        SimulatorErrors(jitter_px=-1)
    with pytest.raises(ValueError, match="probability"):
        SimulatorErrors(box_union=2)


# ------------------------------------------------------------------------------------------ where SAM goes


def test_decoded_logits_upscale_to_the_exact_answer(scene):
    sim = SimulatedSam([scene], ERROR_PRESETS["moderate"])
    image = EmbeddingCache(sim).prompt_image("s", scene.image)
    inst = scene.instances[0]

    logits, predicted = image.predict_logits(
        points=torch.tensor([_deepest(inst.mask)]), point_labels=torch.ones(1, 1, dtype=torch.int64)
    )

    answer = sim.answer(0, points=_deepest(inst.mask), point_labels=[1])
    assert np.array_equal(logits[0].numpy(), answer.logits)
    assert np.allclose(predicted[0].numpy(), answer.predicted_iou)


def test_refine_semantic_runs_on_the_simulator_through_the_embedding_cache(scene):
    cache = EmbeddingCache(SimulatedSam([scene]))
    baseline = study_baseline(scene, 0, blur_radius=2)
    before = score_masks(scene.semantic, baseline, OPTIONS).scores.miou

    image = cache.prompt_image("s", scene.image)
    study = refine_semantic(
        image, baseline, prompts="points", gate=0.0, min_change=0.0, protect_regions=False, fill="background"
    )
    default = refine_semantic(cache.prompt_image("s", scene.image), baseline)
    ungated = refine_semantic(
        cache.prompt_image("s", scene.image), baseline, min_change=0.0, protect_regions=False
    )

    assert cache.encoder_calls == 1
    assert score_masks(scene.semantic, study.semantic, OPTIONS).scores.miou > before + 0.05
    assert score_masks(scene.semantic, ungated.semantic, OPTIONS).scores.miou > before + 0.05
    assert score_masks(scene.semantic, default.semantic, OPTIONS).scores.miou >= before


def test_the_mask_source_feeds_vote_masks(scene):
    source = SimulatedMaskSource(SimulatedSam([scene], ERROR_PRESETS["moderate"]))
    baseline = study_baseline(scene, 0, blur_radius=2)

    proposals = source.proposals(SampleItem("s", "", scene.image))
    voted = vote_masks(proposals, baseline, mode="no_harm")

    assert isinstance(source, MaskSource) and len(proposals) > len(scene.instances)
    assert ((proposals.predicted_iou >= 0) & (proposals.predicted_iou <= 1)).all()
    assert voted.semantic.shape == baseline.shape and voted.accepted.any()


# ------------------------------------------------------------------------------------------ study scenes


def test_study_scenes_hold_touching_same_class_and_camouflaged_objects(scene):
    first, second = _of_kind(scene, "touching")
    pair = _of_kind(scene, "camouflaged")

    assert first.class_id == second.class_id
    assert (ndimage.binary_dilation(first.mask) & second.mask).any()
    assert pair[0].class_id != pair[1].class_id
    colour = [scene.image[i.mask].mean(axis=0) for i in pair]
    assert np.linalg.norm(colour[0] - colour[1]) < 45


def test_study_baselines_miss_and_cut_objects_as_asked(scene):
    things = [i for i in scene.instances if i.class_id not in scene.stuff_classes]

    exact = study_baseline(scene, 0)
    missed = study_baseline(scene, 0, missed=2)
    partial = study_baseline(scene, 0, partial=2)

    assert np.array_equal(exact, scene.semantic)
    gone = [i for i in things if (missed[i.mask] == 0).all()]
    halved = [i for i in things if 0.4 < (partial[i.mask] == 0).mean() < 0.6]
    assert len(gone) >= 2 and len(halved) == 2
