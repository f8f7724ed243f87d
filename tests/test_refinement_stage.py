"""refine_with_sam and prompt_study end to end on the real temporary database with a tiny random SAM.

Random weights: these tests check plumbing, bookkeeping and the no-harm gate, never refinement quality.
"""

from __future__ import annotations

import fiftyone as fo
import fiftyone.operators as foo
import numpy as np
import pytest

from samseg_core import prompt_study, refine_with_sam
from samseg_core.labels import read_segmentation
from samseg_core.metrics import DatasetIoUAccumulator
from samseg_core.sam_embedding import EmbeddingCache
from samseg_core.stages.refinement import STUDY_CONFIGS, format_table
from samseg_core.testing import tiny_sam

TINY_SAM = "samseg_core.testing:tiny_sam"
REFINE = "@samseg/samseg/refine_with_sam"
STUDY = "@samseg/samseg/prompt_study"


def _maps(samples, field):
    return [read_segmentation(label) for label in samples.values(field)]


@pytest.fixture
def cache():
    return EmbeddingCache(tiny_sam())


def test_sdk_writes_refined_segmentations_with_the_baselines_mask_targets(scene_dataset, cache):
    summary = refine_with_sam(scene_dataset, semantic_field="coarse", cache=cache, batch_size=2)

    assert (summary.processed, summary.failed) == (4, 0)
    assert summary.extra["encoder_calls"] == 4 and summary.extra["prompt_sets"] > 0
    assert scene_dataset.mask_targets["sam_refined"] == scene_dataset.mask_targets["coarse"]
    shapes = [m.shape for m in _maps(scene_dataset, "sam_refined")]
    assert shapes == [m.shape for m in _maps(scene_dataset, "coarse")]


def test_a_gate_no_candidate_can_pass_leaves_every_baseline_unchanged(scene_dataset, cache):
    refine_with_sam(scene_dataset, semantic_field="coarse", cache=cache, gate=1.0, prompts=("box",))

    for refined, coarse in zip(_maps(scene_dataset, "sam_refined"), _maps(scene_dataset, "coarse")):
        assert np.array_equal(refined, coarse)


def test_accepted_regions_are_written_as_detections_with_their_scores(scene_dataset, cache):
    summary = refine_with_sam(
        scene_dataset, semantic_field="coarse", cache=cache, gate=0.0, instances_field="sam_regions"
    )

    detections = [d for dets in scene_dataset.values("sam_regions") for d in dets.detections]
    assert len(detections) == summary.extra["accepted"] > 0
    names = set(scene_dataset.mask_targets["coarse"].values())
    for det in detections:
        assert det.label in names and det.mask is not None
        assert 0.0 <= det["baseline_iou"] <= 1.0 and 0.0 <= det["stability_score"] <= 1.0
        assert det.confidence == pytest.approx(det["predicted_iou"])


def test_a_shared_cache_encodes_each_image_once_across_stages(scene_dataset, cache):
    refine_with_sam(scene_dataset, semantic_field="coarse", label_field="a", cache=cache)
    second = refine_with_sam(
        scene_dataset, semantic_field="coarse", label_field="b", cache=cache, prompts="mask"
    )

    assert second.extra["encoder_calls"] == 0
    assert cache.encoder_calls == len(scene_dataset)


def test_baseline_stored_at_another_resolution_is_refined_at_its_own_resolution(scene_dataset, cache):
    sample = scene_dataset.first()
    small = read_segmentation(sample.coarse)[::2, ::2].copy()
    sample["coarse"] = fo.Segmentation(mask=small.astype(np.uint8))
    sample.save()

    refine_with_sam(scene_dataset.limit(1), semantic_field="coarse", cache=cache)

    assert read_segmentation(scene_dataset.first().sam_refined).shape == small.shape


def test_a_sample_without_baseline_gets_an_error_and_the_others_go_on(scene_dataset, cache):
    sample = scene_dataset.first()
    sample["coarse"] = None
    sample.save()

    summary = refine_with_sam(scene_dataset, semantic_field="coarse", cache=cache)

    assert (summary.processed, summary.failed) == (3, 1)
    assert "no 'coarse' segmentation" in scene_dataset.first()["sam_refined_error"]


def test_operator_runs_through_execute_operator_with_a_model_spec(scene_dataset):
    params = {
        "semantic_field": "coarse",
        "label_field": "op_refined",
        "sam": TINY_SAM,
        "device": "cpu",
        "prompt_points": False,
        "prompt_box": False,
        "prompt_loose_box": True,
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
        semantic_field="coarse",
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


def test_prompt_study_writes_every_configuration_and_encodes_each_image_once(scene_dataset, cache):
    view = scene_dataset.limit(2)

    table = prompt_study(view, semantic_field="coarse", gt_field="ground_truth", cache=cache)

    assert cache.encoder_calls == 2
    assert [row["config"] for row in table.rows] == ["baseline", *STUDY_CONFIGS]
    for name in STUDY_CONFIGS:
        assert scene_dataset.count(f"study_{name}") == 2
    assert table.num_images == 2


def test_prompt_study_table_scores_match_the_metrics_module(scene_dataset, cache):
    configs = {"box": STUDY_CONFIGS["box"], "gated": {"prompts": ("points", "box"), "gate": 0.5}}
    table = prompt_study(
        scene_dataset, configs, semantic_field="coarse", gt_field="ground_truth", cache=cache
    )

    for row in table.rows:
        acc = DatasetIoUAccumulator(num_classes=6)
        for gt, pred in zip(_maps(scene_dataset, "ground_truth"), _maps(scene_dataset, row["field"])):
            acc.add(gt, pred)
        assert row["miou"] == pytest.approx(acc.summed().miou)
        assert row["mean_image_miou"] == pytest.approx(acc.mean_of_images())
        assert row["delta_miou"] == pytest.approx(row["miou"] - table.rows[0]["miou"])
    assert "gated" in format_table(table) and "box" in table.format_table()


def test_prompt_study_operator_runs_the_chosen_configurations(scene_dataset):
    result = foo.get_operator(STUDY)(
        scene_dataset,
        configs=["box", "points_box_gated"],
        semantic_field="coarse",
        sam=TINY_SAM,
        device="cpu",
    )

    assert [row["config"] for row in result["rows"]] == ["baseline", "box", "points_box_gated"]
    assert scene_dataset.count("study_box") == 4 and scene_dataset.get_field("study_single_point") is None
    assert "points_box_gated" in result["table"]


def _form(operator_uri, dataset, params):
    from fiftyone.operators.executor import ExecutionContext

    ctx = ExecutionContext(request_params={"dataset_name": dataset.name, "params": params})
    return foo.get_operator(operator_uri).resolve_input(ctx).type.properties


def test_refine_form_offers_prompt_checkboxes_and_the_margin_only_for_loose_boxes(scene_dataset):
    plain = _form(REFINE, scene_dataset, {})
    loose = _form(REFINE, scene_dataset, {"prompt_box": True, "prompt_loose_box": True})

    assert {"prompt_point", "prompt_points", "prompt_box", "prompt_extreme_points", "prompt_mask"} <= set(
        plain
    )
    assert "loose_margin" not in plain and "loose_margin" in loose
    assert "box_conflict" in loose and "box_conflict" not in plain
    assert "coarse" in plain["semantic_field"].type.values
