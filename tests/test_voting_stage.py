"""semantic_voting through the SDK, foo.execute_operator and a delegated operation, on the real temp database."""

from __future__ import annotations

import fiftyone as fo
import fiftyone.operators as foo
import numpy as np
import pytest

from samseg_core import semantic_voting
from samseg_core.errors import FieldExistsError
from samseg_core.labels import masks_from_detections, read_segmentation
from samseg_core.ssa_format import read_ssa_json
from samseg_core.testing import tiny_sam
from samseg_core.voting import vote_masks

OPERATOR = "@samseg/samseg/semantic_voting"
TINY_SAM = "samseg_core.testing:tiny_sam"
# with random weights SAM keeps no mask unless the quality thresholds are 0
RANDOM_SAM = dict(amg_preset="default", points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)


@pytest.fixture
def scene_dataset(dataset, tmp_path):
    """4 synthetic scenes with ``ground_truth`` and a degraded ``coarse`` baseline (conftest's fixture of that
    name sets ``dataset.scenes``, which FiftyOne refuses; the scenes are kept here as ``scenes`` instead)."""
    from samseg_core.mask_targets import merge_mask_targets
    from samseg_core.testing import degrade_prediction, make_scenes, write_scene_images

    scenes = make_scenes(4, seed=0)
    paths = write_scene_images(scenes, tmp_path / "images")
    dataset.add_samples(
        fo.Sample(
            filepath=str(path),
            ground_truth=fo.Segmentation(mask=scene.semantic.astype("uint8")),
            coarse=fo.Segmentation(mask=degrade_prediction(scene, seed=i).astype("uint8")),
        )
        for i, (scene, path) in enumerate(zip(scenes, paths))
    )
    merge_mask_targets(dataset, "ground_truth", scenes[0].class_names)
    merge_mask_targets(dataset, "coarse", scenes[0].class_names)
    return dataset, scenes


@pytest.fixture
def masked_dataset(scene_dataset):
    """The scene dataset plus ``gt_masks``: one stored Detection (box-relative mask) per scene instance."""
    dataset, scenes = scene_dataset
    values = []
    for scene in scenes:
        dets = [
            fo.Detection.from_mask(inst.mask, label=scene.class_names[inst.class_id])
            for inst in scene.instances
        ]
        for det, inst in zip(dets, scene.instances):
            det["predicted_iou"] = 0.5 + 0.01 * inst.class_id
        values.append(fo.Detections(detections=dets))
    dataset.set_values("gt_masks", values)
    return dataset


def stored_vote(sample):
    """What voting over the sample's stored masks must give (the algorithm on the same masks)."""
    baseline = read_segmentation(sample.coarse)
    masks, _ = masks_from_detections(sample.gt_masks, *baseline.shape)
    return vote_masks(masks, baseline)


def test_stored_detections_source_writes_the_voted_segmentation_and_detections(masked_dataset):
    summary = semantic_voting(masked_dataset, baseline_field="coarse", masks="field:gt_masks")

    assert (summary.processed, summary.failed) == (4, 0)
    assert summary.extra["mask_source"] == "field:gt_masks"
    assert masked_dataset.mask_targets["ssa"] == masked_dataset.mask_targets["coarse"]
    for sample in masked_dataset:
        expected = stored_vote(sample)
        assert np.array_equal(read_segmentation(sample.ssa), expected.semantic)
        dets = sample.ssa_masks.detections
        names = masked_dataset.mask_targets["coarse"]
        assert [d.label for d in dets] == [names[c] for c in expected.mask_classes if c >= 0]
        assert [d.confidence for d in dets] == pytest.approx(expected.vote_share[expected.areas > 0].tolist())
        assert dets[0].class_proposals[0] == dets[0].label and dets[0].area > 0
        assert dets[0].predicted_iou > 0.5 and dets[0].stability_score is None


def test_tiny_sam_run_writes_masks_with_sam_scores(scene_dataset):
    view = scene_dataset[0].limit(2)

    summary = semantic_voting(view, baseline_field="coarse", sam=tiny_sam(), device="cpu", **RANDOM_SAM)

    assert (summary.processed, summary.failed) == (2, 0) and summary.extra["masks"] > 0
    sample = view.first()
    assert read_segmentation(sample.ssa).shape == read_segmentation(sample.coarse).shape
    det = sample.ssa_masks.detections[0]
    assert 0.0 <= det.predicted_iou and det.stability_score is not None and det.vote_share == det.confidence


def test_superpixel_source_needs_no_weights(scene_dataset):
    dataset, _ = scene_dataset

    summary = semantic_voting(
        dataset.limit(1), baseline_field="coarse", masks="slic", mask_options={"n_segments": 40}
    )

    assert summary.extra["mask_source"] == "slic" and summary.extra["masks"] > 10
    assert dataset.count("ssa_masks.detections") == summary.extra["masks"]


def test_no_harm_mode_records_which_masks_were_accepted(masked_dataset):
    semantic_voting(
        masked_dataset, baseline_field="coarse", masks="field:gt_masks", mode="no_harm", min_vote_share=0.99
    )

    sample = masked_dataset.first()
    accepted = [d.accepted for d in sample.ssa_masks.detections]
    assert not all(accepted)
    assert all(d.vote_share >= 0.99 for d in sample.ssa_masks.detections if d.accepted)


def test_semantic_model_replaces_the_stored_baseline(masked_dataset, tmp_path):
    from samseg_core.testing import save_tiny_segformer

    id2label = {0: "background", 1: "sky", 2: "road"}
    model_dir = save_tiny_segformer(tmp_path / "segformer", id2label)

    summary = semantic_voting(
        masked_dataset, masks="field:gt_masks", semantic_model=str(model_dir), mode="no_harm", device="cpu"
    )

    assert summary.processed == 4 and masked_dataset.mask_targets["ssa"] == id2label
    labels = {d.label for s in masked_dataset.values("ssa_masks") for d in s.detections}
    assert labels <= set(id2label.values())


def test_json_dir_gets_one_ssa_file_per_sample(masked_dataset, tmp_path):
    semantic_voting(
        masked_dataset, baseline_field="coarse", masks="field:gt_masks", json_dir=tmp_path / "json"
    )

    sample = masked_dataset.first()
    record = read_ssa_json(tmp_path / "json" / f"{sample.id}.json")
    assert len(list((tmp_path / "json").glob("*.json"))) == 4
    assert [a["class_name"] for a in record["annotations"]] == [d.label for d in sample.ssa_masks.detections]


def test_skip_existing_resumes_an_interrupted_run(masked_dataset):
    semantic_voting(masked_dataset.limit(2), baseline_field="coarse", masks="field:gt_masks")

    resumed = semantic_voting(
        masked_dataset, baseline_field="coarse", masks="field:gt_masks", skip_existing=True
    )

    assert (resumed.processed, resumed.skipped) == (2, 2)
    assert masked_dataset.count("ssa") == 4


def test_existing_results_are_not_clobbered_without_overwrite(masked_dataset):
    semantic_voting(masked_dataset, baseline_field="coarse", masks="field:gt_masks")
    masked_dataset.set_values("ssa_masks", [None] * 4)

    with pytest.raises(FieldExistsError, match="overwrite=True"):
        semantic_voting(masked_dataset, baseline_field="coarse", masks="field:gt_masks")
    replaced = semantic_voting(
        masked_dataset, baseline_field="coarse", masks="field:gt_masks", overwrite=True
    )

    assert replaced.processed == 4 and masked_dataset.count("ssa_masks") == 4


def test_missing_inputs_are_named(masked_dataset):
    with pytest.raises(ValueError, match="no field 'baseline'"):
        semantic_voting(masked_dataset, masks="field:gt_masks")
    with pytest.raises(ValueError, match="masks='field:gt_masks'"):
        semantic_voting(masked_dataset, baseline_field="coarse", masks="gt_masks")
    with pytest.raises(ValueError, match="not Detections"):
        semantic_voting(masked_dataset, baseline_field="coarse", masks="field:ground_truth")
    assert masked_dataset.get_field("ssa") is None


def test_operator_runs_immediately_through_execute_operator(scene_dataset):
    dataset, _ = scene_dataset
    params = dict(baseline_field="coarse", masks="sam", sam=TINY_SAM, device="cpu", label_field="op_ssa",
                  instances_field="op_masks", amg_preset="default", points_per_side=4, pred_iou_thresh=0.0,
                  stability_score_thresh=0.0)  # fmt: skip

    result = foo.execute_operator(OPERATOR, {"view": dataset.limit(1).view(), "params": params})

    assert result.result["processed"] == 1
    assert dataset.count("op_ssa") == 1 and dataset.count("op_masks.detections") > 0


def test_form_offers_stored_masks_and_the_presets_settings(masked_dataset):
    from types import SimpleNamespace

    operator = foo.get_operator(OPERATOR)

    def form(params):
        ctx = SimpleNamespace(params=params, dataset=masked_dataset, target_view=lambda: masked_dataset)
        return operator.resolve_input(ctx).type.to_json()["properties"]

    stored = form({"masks": "field"})
    assert stored["masks_field"]["type"]["values"] == ["", "gt_masks"]  # Detections fields only
    assert set(stored["baseline_field"]["type"]["values"]) >= {"coarse", "ground_truth"}
    assert "gt_masks" not in stored["baseline_field"]["type"]["values"]
    assert "amg_preset" not in stored  # SAM's settings only show for masks="sam"
    sam = form({"masks": "sam"})
    assert set(sam["amg_preset"]["type"]["values"]) == {"ssa", "fast", "default"}
    assert sam["points_per_side"]["default"] is None  # empty: the preset's


def test_operator_call_forwards_to_the_sdk(masked_dataset):
    operator = foo.get_operator(OPERATOR)

    result = operator(
        masked_dataset.limit(2), baseline_field="coarse", masks="field:gt_masks", label_field="called"
    )

    assert result["processed"] == 2 and masked_dataset.count("called") == 2


def test_delegated_operation_is_queued_then_executed(masked_dataset):
    from fiftyone.operators.delegated import DelegatedOperationService
    from fiftyone.operators.executor import ExecutionRunState

    queued = foo.get_operator(OPERATOR)(
        masked_dataset, baseline_field="coarse", masks="field:gt_masks", label_field="queued", delegate=True
    )
    service = DelegatedOperationService()
    doc = service.get(queued.result["id"])
    assert doc.run_state == ExecutionRunState.QUEUED and masked_dataset.get_field("queued") is None

    service.execute_operation(doc)

    assert service.get(doc.id).run_state == ExecutionRunState.COMPLETED
    masked_dataset.reload()
    assert masked_dataset.count("queued") == 4 and masked_dataset.count("ssa_masks") == 4


def test_a_built_mask_source_is_used(scene_dataset):
    from samseg_core.mask_sources import SuperpixelSource

    dataset, _ = scene_dataset
    source = SuperpixelSource("slic", n_segments=20)

    summary = semantic_voting(dataset.limit(1), baseline_field="coarse", masks=source)

    assert summary.extra["mask_source"] == "slic" and summary.processed == 1
    assert 1 < dataset.count("ssa_masks.detections") <= 40
