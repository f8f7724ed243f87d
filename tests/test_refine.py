"""SAM refinement: candidate selection, the no-harm gate, aggregation, batching, and a real tiny SAM run.

Selection and aggregation use a predictor double returning known candidates: SAM's weights cannot exist here,
and only known candidates make the expected outcome checkable.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from samseg_core.prompts import PromptSet
from samseg_core.refine import MAX_PROMPTS_PER_CALL, prompts_per_call, refine_semantic
from samseg_core.refine import refine_prompt_sets as gated_refine_prompt_sets
from samseg_core.sam_embedding import EmbeddingCache
from samseg_core.testing import degrade_prediction, make_scene, tiny_sam

SHAPE = (20, 20)
LOGIT = 5.0
#: The change gates off: the tests of selection, the IoU gate, fill and overlap use toy masks whose changes are
#: deliberately small or swallow regions; the change gates have their own tests at the end.
OPEN = {"min_change": 0.0, "protect_regions": False, "min_predicted_iou": 0.0}


def refine_prompt_sets(*args, **kwargs):
    return gated_refine_prompt_sets(*args, **{**OPEN, **kwargs})


class CandidatePredictor:
    """A ``PromptTarget`` returning, for the i-th prompt set it sees, ``candidates[i]`` as logits."""

    def __init__(self, candidates, scores=None, logits=None):
        masks = np.asarray(candidates, dtype=bool)
        self.logits = (
            torch.as_tensor(logits, dtype=torch.float32)
            if logits is not None
            else torch.where(torch.as_tensor(masks), LOGIT, -LOGIT)
        )
        n = self.logits.shape[0]
        self.scores = torch.as_tensor(
            scores if scores is not None else np.full((n, 3), 0.5), dtype=torch.float32
        )
        self.model = SimpleNamespace(input_size=64, pads_input=True, mask_threshold=0.0)
        self.original_size = self.logits.shape[-2:]
        self.calls: list[dict] = []
        self._next = 0

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def predict_logits(self, points=None, point_labels=None, boxes=None, mask_inputs=None, multimask=True):
        batch = next(t for t in (points, boxes, mask_inputs) if t is not None).shape[0]
        self.calls.append({"points": points, "labels": point_labels, "boxes": boxes, "masks": mask_inputs})
        lo, self._next = self._next, self._next + batch
        return self.logits[lo : self._next], self.scores[lo : self._next]


def _rect(y0, y1, x0, x1, shape=SHAPE):
    mask = np.zeros(shape, dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def _prompt(class_id, region, n_points=1):
    ys, xs = np.nonzero(region)
    points = np.stack([xs[:n_points], ys[:n_points]], axis=1).astype(np.float32)
    return PromptSet(class_id, region, points, np.ones(n_points, dtype=np.int32), box=None, mask_input=None)


def _semantic(*regions_and_classes):
    semantic = np.zeros(SHAPE, dtype=np.int64)
    for region, class_id in regions_and_classes:
        semantic[region] = class_id
    return semantic


EMPTY = np.zeros(SHAPE, dtype=bool)
FULL = np.ones(SHAPE, dtype=bool)


def test_baseline_iou_selection_picks_the_candidate_closest_to_the_baseline_region():
    region = _rect(5, 15, 5, 15)
    closest = _rect(4, 15, 5, 15)
    predictor = CandidatePredictor([[FULL, closest, _rect(0, 3, 0, 3)]], scores=[[0.9, 0.1, 0.8]])

    result = refine_prompt_sets(predictor, _semantic((region, 1)), [_prompt(1, region)], gate=0.0)

    assert result.regions.candidate.tolist() == [1]
    assert result.regions.baseline_iou[0] == pytest.approx(100 / 110)
    assert np.array_equal(result.semantic, _semantic((closest, 1)))


def test_predicted_iou_selection_picks_sams_most_confident_candidate():
    region = _rect(5, 15, 5, 15)
    predictor = CandidatePredictor([[FULL, region, EMPTY]], scores=[[0.9, 0.1, 0.8]])

    result = refine_prompt_sets(
        predictor, _semantic((region, 1)), [_prompt(1, region)], selection="predicted_iou", gate=0.0
    )

    assert result.regions.candidate.tolist() == [0]
    assert result.regions.predicted_iou.tolist() == pytest.approx([0.9])


def test_gate_keeps_the_baseline_when_all_candidates_are_wrong():
    region = _rect(5, 15, 5, 15)
    baseline = _semantic((region, 1))
    predictor = CandidatePredictor([[_rect(0, 4, 0, 20), _rect(16, 20, 0, 20), FULL]])

    result = refine_prompt_sets(predictor, baseline, [_prompt(1, region)], gate=0.5)

    assert result.regions.accepted.tolist() == [False]
    assert np.array_equal(result.semantic, baseline)


def test_gate_zero_accepts_a_wrong_candidate_as_the_study_did():
    region = _rect(5, 15, 5, 15)
    predictor = CandidatePredictor([[FULL, FULL, FULL]])

    result = refine_prompt_sets(predictor, _semantic((region, 1)), [_prompt(1, region)], gate=0.0)

    assert result.regions.accepted.tolist() == [True]
    assert (result.semantic == 1).all()


def test_overlapping_accepted_masks_smaller_one_wins_by_default():
    big, small = _rect(0, 20, 0, 20), _rect(8, 12, 8, 12)
    baseline = _semantic((big, 1), (small, 2))
    predictor = CandidatePredictor([[big] * 3, [_rect(7, 13, 7, 13)] * 3], scores=[[0.9] * 3, [0.1] * 3])

    result = refine_prompt_sets(predictor, baseline, [_prompt(1, baseline == 1), _prompt(2, small)], gate=0.0)

    assert np.array_equal(result.semantic, _semantic((big, 1), (_rect(7, 13, 7, 13), 2)))


def test_overlap_by_score_lets_the_more_confident_mask_win():
    big, small = _rect(0, 20, 0, 20), _rect(8, 12, 8, 12)
    baseline = _semantic((big, 1), (small, 2))
    predictor = CandidatePredictor([[big] * 3, [small] * 3], scores=[[0.9] * 3, [0.1] * 3])

    result = refine_prompt_sets(
        predictor, baseline, [_prompt(1, baseline == 1), _prompt(2, small)], gate=0.0, overlap="score"
    )

    assert (result.semantic == 1).all()


def test_fill_baseline_keeps_pixels_the_accepted_mask_no_longer_covers():
    region = _rect(5, 15, 5, 15)
    shrunk = _rect(6, 14, 6, 14)
    predictor = CandidatePredictor([[shrunk] * 3])

    result = refine_prompt_sets(predictor, _semantic((region, 1)), [_prompt(1, region)], gate=0.5)

    assert np.array_equal(result.semantic, _semantic((region, 1)))


def test_fill_background_releases_uncovered_pixels_of_accepted_regions():
    region, shrunk, other = _rect(5, 15, 5, 15), _rect(6, 14, 6, 14), _rect(0, 3, 0, 3)
    baseline = _semantic((region, 1), (other, 4))
    predictor = CandidatePredictor([[shrunk] * 3])

    result = refine_prompt_sets(
        predictor, baseline, [_prompt(1, region)], gate=0.5, fill="background", background_id=9
    )

    expected = np.full(SHAPE, 0)
    expected[region] = 9
    expected[shrunk] = 1
    expected[other] = 4  # not prompted: untouched
    assert np.array_equal(result.semantic, expected)


def test_all_prompt_sets_of_an_image_go_through_one_decoder_call_padded_with_not_a_point():
    regions = [_rect(i, i + 2, 0, 20) for i in range(0, 20, 2)]
    prompt_sets = [_prompt(k + 1, r, n_points=1 + k % 3) for k, r in enumerate(regions)]
    predictor = CandidatePredictor([[r] * 3 for r in regions])

    refine_prompt_sets(predictor, _semantic(*[(r, k + 1) for k, r in enumerate(regions)]), prompt_sets)

    (call,) = predictor.calls
    assert call["points"].shape == (10, 3, 2)
    assert (call["labels"] == -1).sum().item() == sum(3 - (1 + k % 3) for k in range(10))


def test_max_prompts_per_call_splits_the_decoder_batches():
    regions = [_rect(i, i + 2, 0, 20) for i in range(0, 20, 2)]
    predictor = CandidatePredictor([[r] * 3 for r in regions])

    result = refine_prompt_sets(
        predictor,
        _semantic(*[(r, k + 1) for k, r in enumerate(regions)]),
        [_prompt(k + 1, r) for k, r in enumerate(regions)],
        max_prompts_per_call=4,
    )

    assert [c["points"].shape[0] for c in predictor.calls] == [4, 4, 2]
    assert result.regions.accepted.all()


def test_default_decoder_batch_shrinks_for_large_images_and_on_cpu_to_bound_memory():
    small, large = prompts_per_call((200, 300), 1024, "cuda"), prompts_per_call((3000, 4000), 1024, "cuda")

    assert 1 <= large < small <= MAX_PROMPTS_PER_CALL
    assert prompts_per_call((200, 300), 1024, "cpu") < small
    assert prompts_per_call((64, 64), 256, "cuda") == MAX_PROMPTS_PER_CALL


def test_stability_score_is_computed_from_the_candidate_logits():
    region = _rect(0, 10, 0, 10)
    logits = np.full((1, 3, *SHAPE), -5.0, dtype=np.float32)
    logits[0, :, :10, :10] = 0.5  # above the threshold but inside the +/-1 band
    logits[0, :, :5, :10] = 5.0  # stable half

    result = refine_prompt_sets(
        CandidatePredictor(None, logits=logits), _semantic((region, 1)), [_prompt(1, region)]
    )

    assert result.regions.stability.tolist() == pytest.approx([0.5])


@pytest.fixture(scope="module")
def tiny_cache():
    return EmbeddingCache(tiny_sam())


def test_real_tiny_sam_refinement_returns_consistent_scores(tiny_cache):
    scene = make_scene(0)
    baseline = degrade_prediction(scene)
    image = tiny_cache.prompt_image("scene0", scene.image)

    result = refine_semantic(image, baseline, prompts=("points", "box", "mask"), gate=0.3, **OPEN)

    regions = result.regions
    assert result.semantic.shape == baseline.shape and len(regions) == len(np.unique(baseline))
    class_masks = baseline[None] == regions.class_ids[:, None, None]
    inter = (regions.masks & class_masks).sum(axis=(1, 2))
    union = (regions.masks | class_masks).sum(axis=(1, 2))
    assert regions.baseline_iou == pytest.approx(inter / np.maximum(union, 1))
    assert np.array_equal(regions.accepted, regions.baseline_iou >= 0.3)
    assert ((0 <= regions.stability) & (regions.stability <= 1)).all()
    unclaimed = ~regions.masks[regions.accepted].any(axis=0)
    assert np.array_equal(result.semantic[unclaimed], baseline[unclaimed])


def test_embedding_is_computed_once_for_many_refinements_of_an_image(tiny_cache):
    scene = make_scene(1)
    baseline = degrade_prediction(scene)
    before = tiny_cache.encoder_calls

    for prompts in (("point",), ("box",), ("points", "box", "mask")):
        refine_semantic(tiny_cache.prompt_image("scene1", scene.image), baseline, prompts=prompts)

    assert tiny_cache.encoder_calls - before == 1


CONFIDENT = [[0.9, 0.1, 0.1]]  # SAM's predicted IoU of the three candidates


def _eroded_square():
    """Class 1 is a 10x10 square the baseline has eroded by 2 px on every side (a 6x6 square)."""
    truth = _rect(5, 15, 5, 15)
    return truth, _semantic((_rect(7, 13, 7, 13), 1))


def test_min_change_rejects_a_candidate_within_boundary_noise_and_accepts_a_real_correction():
    truth, baseline = _eroded_square()
    region = baseline == 1
    nudged = region | _rect(6, 7, 7, 13)  # one row more: 6 changed px for a 24 px boundary
    for candidate, accepted in ((nudged, False), (truth, True)):
        predictor = CandidatePredictor([[candidate, EMPTY, EMPTY]], scores=CONFIDENT)
        result = gated_refine_prompt_sets(predictor, baseline, [_prompt(1, region)], gate=0.3)
        assert result.regions.accepted.tolist() == [accepted]
        assert result.regions.changed_pixels[0] == np.count_nonzero(candidate & ~region)
        expected = truth if accepted else region
        assert np.array_equal(result.semantic == 1, expected)
    ratio = gated_refine_prompt_sets(
        CandidatePredictor([[nudged, EMPTY, EMPTY]], scores=CONFIDENT),
        baseline,
        [_prompt(1, region)],
        gate=0.3,
        min_change=0.2,
    ).regions
    assert ratio.accepted.tolist() == [True] and ratio.change_ratio[0] == pytest.approx(6 / (24 * np.pi / 4))


def test_protect_regions_rejects_a_candidate_that_swallows_another_class_region():
    truth, baseline = _eroded_square()
    neighbour = _rect(5, 15, 15, 19)  # class 2, touching the square's right side
    baseline[neighbour] = 2
    swallowing = truth | neighbour  # a box holding both objects
    predictor = CandidatePredictor([[swallowing, EMPTY, EMPTY]], scores=CONFIDENT)
    result = gated_refine_prompt_sets(predictor, baseline, [_prompt(1, baseline == 1)], gate=0.2)
    assert result.regions.swallows.tolist() == [True] and result.regions.accepted.tolist() == [False]
    assert np.array_equal(result.semantic, baseline)
    open_gate = gated_refine_prompt_sets(
        CandidatePredictor([[swallowing, EMPTY, EMPTY]], scores=CONFIDENT), baseline, [_prompt(1, baseline == 1)],
        gate=0.2, protect_regions=False,
    )  # fmt: skip
    assert (open_gate.semantic[neighbour] == 1).all()


def test_a_speck_smaller_than_the_protected_area_may_be_absorbed():
    truth, baseline = _eroded_square()
    speck = _rect(9, 11, 13, 15)  # 4 px of class 3 inside the eroded band: baseline noise, free to fix
    baseline[speck] = 3
    predictor = CandidatePredictor([[truth, EMPTY, EMPTY]], scores=CONFIDENT)
    result = gated_refine_prompt_sets(predictor, baseline, [_prompt(1, baseline == 1)], gate=0.3)
    assert result.regions.accepted.tolist() == [True] and (result.semantic[speck] == 1).all()


def test_min_predicted_iou_rejects_a_candidate_sam_itself_doubts():
    truth, baseline = _eroded_square()
    region = baseline == 1
    for score, accepted in ((0.69, False), (0.7, True)):
        predictor = CandidatePredictor([[truth, EMPTY, EMPTY]], scores=[[score, 0.1, 0.1]])
        result = gated_refine_prompt_sets(predictor, baseline, [_prompt(1, region)], gate=0.3)
        assert result.regions.accepted.tolist() == [accepted]
