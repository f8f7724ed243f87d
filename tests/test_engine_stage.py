"""open_vocab_labels through the SDK, foo.execute_operator and a queued delegated operation, on the temp DB.

Models are tiny random-init CLIP / BLIP / CLIPSeg with tokenizers built by the tests (no hub access); the
masks to label are the synthetic scenes' instances, stored as ``fo.Detections`` in ``ssa_masks``.
"""

from __future__ import annotations

import json

import fiftyone as fo
import fiftyone.operators as foo
import numpy as np
import pytest

from samseg_core import open_vocab_labels
from samseg_core.errors import StageParameterError
from samseg_core.labels import detections_from_masks, masks_from_detections, read_segmentation
from samseg_core.mask_targets import merge_mask_targets
from samseg_core.testing import degrade_prediction, make_scenes, tiny_segformer, write_scene_images
from samseg_core.testing import tiny_engine_models as tiny

OPERATOR = "@samseg/samseg/open_vocab_labels"
SPEC = "samseg_core.testing.tiny_engine_models"
TINY = {
    "clip": f"{SPEC}:tiny_clip",
    "captioner": f"{SPEC}:tiny_captioner",
    "clipseg": f"{SPEC}:tiny_clipseg_scorer",
}
NO_SEGMENTERS: tuple[str, ...] = ()
# with random weights SAM keeps no mask unless the quality thresholds are 0
RANDOM_SAM = {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}


@pytest.fixture(scope="module")
def models():
    """Built tiny models shared by the SDK tests (objects, as a Python user would pass them)."""
    captioner = tiny.tiny_captioner()
    captioner.max_new_tokens = 8  # short random captions: enough nouns, less decoding time
    return {"clip": tiny.tiny_clip(), "captioner": captioner, "clipseg": tiny.tiny_clipseg_scorer()}


@pytest.fixture
def masked_dataset(dataset, tmp_path):
    """4 synthetic scenes with ``ground_truth`` / degraded ``coarse`` segmentations (mask targets set) and each
    scene's instances stored as ``ssa_masks`` detections."""
    scenes = make_scenes(4, seed=0)
    samples = [
        fo.Sample(
            filepath=str(path),
            ground_truth=fo.Segmentation(mask=scene.semantic.astype("uint8")),
            coarse=fo.Segmentation(mask=degrade_prediction(scene, seed=i).astype("uint8")),
            ssa_masks=detections_from_masks(
                np.stack([instance.mask for instance in scene.instances]), ["mask"] * len(scene.instances)
            ),
        )
        for i, (scene, path) in enumerate(zip(scenes, write_scene_images(scenes, tmp_path / "images")))
    ]
    dataset.add_samples(samples)
    merge_mask_targets(dataset, "ground_truth", scenes[0].class_names)
    merge_mask_targets(dataset, "coarse", scenes[0].class_names)
    return dataset


def _run(samples, models, **kwargs):
    options = dict(masks="field:ssa_masks", semantic_models=NO_SEGMENTERS, min_area=20, device="cpu")
    return open_vocab_labels(samples, **models, **{**options, **kwargs})


def test_sdk_writes_one_labelled_detection_per_mask(masked_dataset, models):
    summary = _run(masked_dataset, models, baseline_fields=["coarse"])

    assert (summary.processed, summary.failed) == (4, 0)
    for source, result in zip(masked_dataset.values("ssa_masks"), masked_dataset.values("ssa_engine")):
        assert len(result.detections) == len(source.detections)
        labelled = [d for d in result.detections if d.skipped_reason is None]
        assert labelled and all(d.label in d.class_proposals and 0 <= d.confidence <= 1 for d in labelled)
        assert all(len(d.proposal_scores) == len(d.class_proposals) <= 3 for d in labelled)


def test_close_set_proposals_come_from_the_stored_field_with_its_mask_targets(masked_dataset, models):
    _run(masked_dataset, models, baseline_fields=["ground_truth"], vocabulary=["widget"], topk=5)
    names = set(masked_dataset.mask_targets["ground_truth"].values())

    proposals = {
        p for d in masked_dataset.values("ssa_engine.detections", unwind=True) for p in d.class_proposals
    }
    assert proposals - {"widget"} and proposals - {"widget"} <= names


def test_segmenters_run_on_the_fly_give_close_set_proposals(masked_dataset, models):
    id2label = {0: "road", 1: "sky", 2: "boat"}
    _run(
        masked_dataset.limit(2),
        models,
        semantic_models=[tiny_segformer(id2label)],
        vocabulary=["widget"],
        topk=5,
    )

    proposals = {
        p for d in masked_dataset.values("ssa_engine.detections", unwind=True) for p in d.class_proposals
    }
    assert proposals - {"widget"} and proposals - {"widget"} <= set(id2label.values())


def test_masks_below_min_area_are_kept_as_unknown_with_a_reason(masked_dataset, models):
    _run(masked_dataset, models, vocabulary=["dog"], min_area=10**6)

    detections = masked_dataset.values("ssa_engine.detections", unwind=True)
    assert {d.label for d in detections} == {"unknown"}
    assert all(d.skipped_reason.startswith("area ") for d in detections)


def test_merged_segmentation_class_ids_are_stable_across_samples_and_runs(masked_dataset, models):
    first, rest = masked_dataset.limit(2), masked_dataset.skip(2)
    _run(first, models, segmentation_field="ssa_semantic")
    targets_after_first = dict(masked_dataset.mask_targets["ssa_semantic"])
    _run(rest, models, segmentation_field="ssa_semantic")
    targets = masked_dataset.mask_targets["ssa_semantic"]

    assert {k: targets[k] for k in targets_after_first} == targets_after_first  # earlier ids never change
    assert len(set(targets.values())) == len(targets)  # one id per name
    for sample in masked_dataset:
        class_map = read_segmentation(sample.ssa_semantic)
        named = {d.label for d in sample.ssa_engine.detections if d.skipped_reason is None}
        assert {targets[int(i)] for i in np.unique(class_map) if i} <= named


def test_json_export_is_readable_by_pycocotools(masked_dataset, models, tmp_path):
    from pycocotools import mask as mask_utils

    _run(masked_dataset.limit(1), models, json_dir=tmp_path)
    [path] = list(tmp_path.glob("*.json"))
    data = json.loads(path.read_text())
    sample = masked_dataset.first()
    height, width = read_segmentation(sample.ground_truth).shape
    stored, _ = masks_from_detections(sample.ssa_masks, height, width)

    decoded = np.stack([mask_utils.decode(a["segmentation"]) for a in data["annotations"]]).astype(bool)
    assert np.array_equal(decoded, stored)
    labels = [None if d.skipped_reason else d.label for d in sample.ssa_engine.detections]
    assert [a["class_name"] for a in data["annotations"]] == labels and any(labels)
    assert all(isinstance(a["class_proposals"], list) for a in data["annotations"])


def test_skip_existing_resumes_without_recomputing(masked_dataset, models):
    _run(masked_dataset.limit(2), models, vocabulary=["dog", "cat"])
    summary = _run(masked_dataset, models, vocabulary=["dog", "cat"], skip_existing=True)

    assert (summary.processed, summary.skipped) == (2, 2)
    assert masked_dataset.count("ssa_engine") == 4


def test_operator_runs_through_execute_operator_with_model_specs(masked_dataset):
    params = {
        "masks": "field",
        "masks_field": "ssa_masks",
        "baseline_fields": ["coarse"],
        "label_field": "op_labels",
        "min_area": 20,
        "mask_batch_size": 8,
        "device": "cpu",
        **TINY,
    }
    result = foo.execute_operator(OPERATOR, {"view": masked_dataset.view(), "params": params})

    assert result.result["processed"] == 4
    assert masked_dataset.count("op_labels.detections") == masked_dataset.count("ssa_masks.detections")


def test_operator_call_loads_models_from_saved_directories(masked_dataset, tmp_path):
    operator = foo.get_operator(OPERATOR)
    directories = {
        "clip": str(tiny.save_tiny_clip(tmp_path / "clip")),
        "captioner": str(tiny.save_tiny_blip(tmp_path / "blip")),
        "clipseg": str(tiny.save_tiny_clipseg(tmp_path / "clipseg")),
    }

    result = operator(
        masked_dataset.limit(1),
        masks="field",
        masks_field="ssa_masks",
        label_field="called",
        semantic_models=[],
        **directories,
    )

    assert result["processed"] == 1 and masked_dataset.count("called") == 1


def test_operator_labels_sam_masks_with_generator_settings_from_the_form(masked_dataset):
    result = foo.get_operator(OPERATOR)(
        masked_dataset.limit(1),
        masks="sam",
        sam="samseg_core.testing:tiny_sam",
        amg_preset="default",
        **RANDOM_SAM,
        label_field="sam_labels",
        vocabulary=["dog", "cat"],
        semantic_models=[],
        device="cpu",
        **{k: v for k, v in TINY.items() if k != "captioner"},
    )

    detections = masked_dataset.first().sam_labels.detections
    assert result["processed"] == 1 and detections
    assert all(d.predicted_iou is not None and d.stability_score is not None for d in detections)


def test_delegated_operation_is_queued_then_executed(masked_dataset):
    from fiftyone.operators.delegated import DelegatedOperationService
    from fiftyone.operators.executor import ExecutionRunState

    queued = foo.get_operator(OPERATOR)(
        masked_dataset,
        masks="field",
        masks_field="ssa_masks",
        label_field="queued",
        vocabulary=["dog", "cat"],
        semantic_models=[],
        device="cpu",
        delegate=True,
        **{k: v for k, v in TINY.items() if k != "captioner"},
    )
    service = DelegatedOperationService()
    doc = service.get(queued.result["id"])
    assert doc.run_state == ExecutionRunState.QUEUED

    service.execute_operation(doc)

    assert service.get(doc.id).run_state == ExecutionRunState.COMPLETED
    masked_dataset.reload()
    assert masked_dataset.count("queued") == 4


def test_old_option_names_still_work_with_a_future_warning(masked_dataset, models):
    with pytest.warns(FutureWarning, match="'semantic_fields' is now called 'baseline_fields'"):
        summary = _run(masked_dataset.limit(1), models, semantic_fields=["coarse"], semantic_field="old_seg")

    assert summary.processed == 1 and masked_dataset.count("old_seg") == 1


def test_a_vocabulary_name_with_a_comma_stays_one_class(masked_dataset, models):
    vocabulary = ["windowpane, window", "car"]
    _run(masked_dataset.limit(2), models, vocabulary=vocabulary, topk=5, segmentation_field="seg")

    labelled = [
        d for d in masked_dataset.values("ssa_engine.detections", unwind=True) if d.skipped_reason is None
    ]
    assert labelled and all(set(d.class_proposals) == set(vocabulary) for d in labelled)
    assert {d.label for d in labelled} <= set(vocabulary)
    assert set(masked_dataset.mask_targets["seg"].values()) <= {"unlabeled", *vocabulary}


def test_a_vocabulary_name_with_a_comma_stays_one_class_through_the_operator(masked_dataset):
    result = foo.get_operator(OPERATOR)(
        masked_dataset.limit(1),
        masks="field",
        masks_field="ssa_masks",
        label_field="op_vocab",
        vocabulary=["windowpane, window", "car"],
        topk=5,
        semantic_models=[],
        device="cpu",
        **{k: v for k, v in TINY.items() if k != "captioner"},
    )

    labelled = [d for d in masked_dataset.first().op_vocab.detections if d.skipped_reason is None]
    assert result["processed"] == 1 and labelled
    assert all(set(d.class_proposals) == {"windowpane, window", "car"} for d in labelled)


def _unchanged(dataset):
    dataset.reload()
    return set(dataset.get_field_schema()), dict(dataset.mask_targets), dataset.count("ssa_masks.detections")


def test_a_negative_min_area_is_refused_before_anything_is_written(masked_dataset, models):
    before = _unchanged(masked_dataset)

    with pytest.raises(StageParameterError) as err:
        _run(masked_dataset, models, min_area=-1, segmentation_field="seg")

    assert err.value.param == "min_area" and err.value.remedy
    assert _unchanged(masked_dataset) == before


def test_a_model_that_cannot_be_loaded_is_refused_before_anything_is_written(
    masked_dataset, models, tmp_path
):
    from samseg_core.models.resolve import ModelLoadError

    before = _unchanged(masked_dataset)
    json_dir = tmp_path / "json"

    with pytest.raises(ModelLoadError) as err:
        _run(masked_dataset, {**models, "clipseg": str(tmp_path / "missing")}, segmentation_field="seg",
             json_dir=json_dir)  # fmt: skip

    assert err.value.param == "clipseg"
    assert _unchanged(masked_dataset) == before and not json_dir.exists()


def test_counts_are_right_when_one_sample_of_a_batch_fails(masked_dataset, models, tmp_path):
    # Old option names only, so this also runs on the pre-contract engine. The middle sample's JSON file name
    # (<stem>_<id>.json) is too long for the file system: it fails after its batch mate was labelled, and the
    # runner retries the batch one sample at a time. Counts must cover each written sample once.
    samples = masked_dataset.limit(3)
    middle = samples.skip(1).first()
    long_path = tmp_path / f"{'x' * 240}.png"
    long_path.write_bytes(open(middle.filepath, "rb").read())
    middle.filepath = str(long_path)
    middle.save()

    summary = _run(samples, models, vocabulary=["dog", "cat"], json_dir=str(tmp_path / "json"), batch_size=3)

    assert (summary.processed, summary.failed) == (2, 1) and middle.id in summary.errors
    written = [d for labels in samples.values("ssa_engine") if labels for d in labels.detections]
    labelled = [d for d in written if d.skipped_reason is None]
    assert summary.extra["masks"] == len(written)
    assert summary.extra["labelled"] == len(labelled)
    assert summary.extra["skipped"] == len(written) - len(labelled)
    assert summary.extra["classes"] == len({d.label for d in labelled})
