"""refine_with_sam end to end on the real temporary database with a tiny random SAM.

Random weights: these tests check plumbing, bookkeeping and the no-harm gate, never refinement quality.
"""

from __future__ import annotations

import fiftyone as fo
import fiftyone.operators as foo
import numpy as np
import pytest
from _faults import BatchFailsOnce

from samseg_core import refine_with_sam
from samseg_core.errors import StageParameterError
from samseg_core.labels import read_segmentation
from samseg_core.sam_embedding import EmbeddingCache
from samseg_core.testing import tiny_sam

TINY_SAM = "samseg_core.testing:tiny_sam"
REFINE = "@samseg/samseg/refine_with_sam"


def _maps(samples, field):
    return [read_segmentation(label) for label in samples.values(field)]


@pytest.fixture
def cache():
    return EmbeddingCache(tiny_sam())


def test_sdk_writes_refined_segmentations_with_the_baselines_mask_targets(scene_dataset, cache):
    summary = refine_with_sam(scene_dataset, baseline_field="coarse", cache=cache, batch_size=2)

    assert (summary.processed, summary.failed) == (4, 0)
    assert summary.extra["encoder_calls"] == 4 and summary.extra["prompt_sets"] > 0
    assert scene_dataset.mask_targets["sam_refined"] == scene_dataset.mask_targets["coarse"]
    shapes = [m.shape for m in _maps(scene_dataset, "sam_refined")]
    assert shapes == [m.shape for m in _maps(scene_dataset, "coarse")]


def test_a_gate_no_candidate_can_pass_leaves_every_baseline_unchanged(scene_dataset, cache):
    refine_with_sam(scene_dataset, baseline_field="coarse", cache=cache, gate=1.0, prompts=("box",))

    for refined, coarse in zip(_maps(scene_dataset, "sam_refined"), _maps(scene_dataset, "coarse")):
        assert np.array_equal(refined, coarse)


def test_accepted_regions_are_written_as_detections_with_their_scores(scene_dataset, cache):
    summary = refine_with_sam(
        scene_dataset, baseline_field="coarse", cache=cache, gate=0.0, instances_field="sam_regions",
        min_change=0.0, protect_regions=False, min_predicted_iou=0.0,  # a random-weight SAM: every gate open
    )  # fmt: skip

    detections = [d for dets in scene_dataset.values("sam_regions") for d in dets.detections]
    assert len(detections) == summary.extra["accepted"] > 0
    names = set(scene_dataset.mask_targets["coarse"].values())
    for det in detections:
        assert det.label in names and det.mask is not None
        assert 0.0 <= det["baseline_iou"] <= 1.0 and 0.0 <= det["stability_score"] <= 1.0
        assert det.confidence == pytest.approx(det["predicted_iou"])


def test_a_shared_cache_encodes_each_image_once_across_stages(scene_dataset, cache):
    refine_with_sam(scene_dataset, baseline_field="coarse", label_field="a", cache=cache)
    second = refine_with_sam(
        scene_dataset, baseline_field="coarse", label_field="b", cache=cache, prompts="mask"
    )

    assert second.extra["encoder_calls"] == 0
    assert cache.encoder_calls == len(scene_dataset)


def test_baseline_stored_at_another_resolution_is_refined_at_its_own_resolution(scene_dataset, cache):
    sample = scene_dataset.first()
    small = read_segmentation(sample.coarse)[::2, ::2].copy()
    sample["coarse"] = fo.Segmentation(mask=small.astype(np.uint8))
    sample.save()

    refine_with_sam(scene_dataset.limit(1), baseline_field="coarse", cache=cache)

    assert read_segmentation(scene_dataset.first().sam_refined).shape == small.shape


def test_a_sample_without_baseline_gets_an_error_and_the_others_go_on(scene_dataset, cache):
    sample = scene_dataset.first()
    sample["coarse"] = None
    sample.save()

    summary = refine_with_sam(scene_dataset, baseline_field="coarse", cache=cache)

    assert (summary.processed, summary.failed) == (3, 1)
    assert "no 'coarse' segmentation" in scene_dataset.first()["sam_refined_error"]


def test_the_old_name_semantic_field_still_works_with_a_future_warning(scene_dataset, cache):
    with pytest.warns(FutureWarning, match="baseline_field"):
        summary = refine_with_sam(scene_dataset.limit(1), semantic_field="coarse", cache=cache)

    assert summary.processed == 1 and scene_dataset.count("sam_refined") == 1


@pytest.mark.parametrize("prompts", [("box", "loose_box"), ()])
def test_two_box_kinds_or_no_prompt_are_refused_before_anything_is_written(scene_dataset, cache, prompts):
    with pytest.raises(StageParameterError) as err:
        refine_with_sam(scene_dataset, baseline_field="coarse", cache=cache, prompts=prompts)

    assert err.value.param == "prompts" and err.value.remedy
    assert scene_dataset.get_field("sam_refined") is None and "sam_refined" not in scene_dataset.mask_targets
    assert cache.encoder_calls == 0


def test_prompts_given_as_text_are_split(scene_dataset, cache):
    summary = refine_with_sam(
        scene_dataset.limit(1), baseline_field="coarse", cache=cache, prompts="points+box"
    )
    same = refine_with_sam(
        scene_dataset.limit(1),
        baseline_field="coarse",
        label_field="b",
        cache=cache,
        prompts=("points", "box"),
    )

    assert summary.extra["prompt_sets"] == same.extra["prompt_sets"] > 0
    assert np.array_equal(*(read_segmentation(scene_dataset.first()[f]) for f in ("sam_refined", "b")))


def test_counts_of_a_batch_retried_sample_by_sample_are_not_doubled(scene_dataset, cache):
    clean = refine_with_sam(scene_dataset, baseline_field="coarse", label_field="a", cache=cache, gate=0.0)
    flaky = BatchFailsOnce(cache.sam)
    retried = refine_with_sam(
        scene_dataset, baseline_field="coarse", label_field="b", cache=flaky, gate=0.0, batch_size=4
    )

    assert flaky.failed and (retried.processed, retried.failed) == (4, 0)
    for key in ("prompt_sets", "accepted"):
        assert retried.extra[key] == clean.extra[key]


def test_operator_runs_through_execute_operator_with_a_model_spec(scene_dataset):
    params = {
        "baseline_field": "coarse",
        "label_field": "op_refined",
        "sam": TINY_SAM,
        "device": "cpu",
        "prompts": ["loose_box"],
        "loose_margin": 0.3,
        "granularity": "region",
    }
    result = foo.execute_operator(REFINE, {"view": scene_dataset.view(), "params": params})

    assert result.result["processed"] == 4
    assert scene_dataset.count("op_refined") == 4


def test_delegated_refinement_is_queued_then_executed(scene_dataset):
    from fiftyone.operators.delegated import DelegatedOperationService
    from fiftyone.operators.executor import ExecutionRunState

    queued = foo.get_operator(REFINE)(
        scene_dataset,
        baseline_field="coarse",
        label_field="queued",
        sam=TINY_SAM,
        device="cpu",
        delegate=True,
    )
    service = DelegatedOperationService()
    doc = service.get(queued.result["id"])
    assert doc.run_state == ExecutionRunState.QUEUED

    service.execute_operation(doc)

    assert service.get(doc.id).run_state == ExecutionRunState.COMPLETED
    scene_dataset.reload()
    assert scene_dataset.count("queued") == 4


def _form(operator_uri, dataset, params):
    from fiftyone.operators.executor import ExecutionContext

    ctx = ExecutionContext(request_params={"dataset_name": dataset.name, "params": params})
    return foo.get_operator(operator_uri).resolve_input(ctx).type.properties


def test_refine_form_offers_the_prompt_types_and_marks_two_box_kinds_invalid(scene_dataset):
    plain = _form(REFINE, scene_dataset, {})
    both = _form(REFINE, scene_dataset, {"baseline_field": "coarse", "prompts": ["box", "loose_box"]})

    choices = [choice.value for choice in plain["prompts"].view.choices]
    assert choices == ["point", "points", "box", "loose_box", "extreme_points", "mask"]
    assert plain["prompts"].default == ["points", "box"] and "loose_margin" in plain
    assert "coarse" in plain["baseline_field"].type.values
    assert both["prompts"].invalid and "loose_box" in both["prompts"].error_message
