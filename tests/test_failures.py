"""Failure modes per ground-truth object: synthetic scenes built to show each mode, and one with none."""

from __future__ import annotations

import numpy as np
import pytest

from samseg_core.failures import (
    FailureThresholds,
    assess_objects,
    detect_failures_in_image,
    objects_from_instances,
    objects_from_semantic,
)


def _canvas():
    return np.zeros((40, 60), np.int64)


def _modes(report):
    return list(report.modes)


def test_object_without_prediction_is_missing():
    gt = _canvas()
    gt[10:20, 10:20] = 1
    report = detect_failures_in_image(_canvas(), gt)
    assert _modes(report) == ["missing"]
    assert report.coverage[0] == 0.0


def test_half_covered_object_is_incomplete():
    gt, pred = _canvas(), _canvas()
    gt[10:20, 10:20] = 1
    pred[10:15, 10:20] = 1
    report = detect_failures_in_image(pred, gt)
    assert _modes(report) == ["incomplete"]
    assert report.coverage[0] == pytest.approx(0.5)
    assert report.iou[0] == pytest.approx(0.5)


def test_prediction_bleeding_onto_a_neighbour_of_another_class_is_overlapping():
    gt, pred = _canvas(), _canvas()
    gt[10:20, 10:20] = 1  # object A
    gt[10:20, 20:30] = 2  # neighbour B
    pred[10:20, 10:30] = 1  # A's prediction swallows B
    report = detect_failures_in_image(pred, gt)
    by_class = dict(zip(report.class_ids.tolist(), _modes(report)))
    assert by_class == {1: "overlapping", 2: "missing"}
    assert report.spill[report.class_ids == 1][0] == pytest.approx(0.5)


def test_one_region_spanning_two_objects_makes_both_overlapping():
    gt, pred = _canvas(), _canvas()
    gt[10:20, 10:20] = 1
    gt[10:20, 23:33] = 1
    pred[10:20, 10:33] = 1  # merged across the 3 px gap
    report = detect_failures_in_image(pred, gt)
    assert _modes(report) == ["overlapping", "overlapping"]
    assert report.spans_objects.all()


def test_touching_instances_merged_by_one_region_are_overlapping():
    pred = _canvas()
    pred[10:20, 10:30] = 1
    masks = np.zeros((2, 40, 60), bool)
    masks[0, 10:20, 10:20] = True
    masks[1, 10:20, 20:30] = True  # touches the first: one region in a semantic map, two instances here
    report = detect_failures_in_image(pred, instance_masks=masks, instance_classes=[1, 1])
    assert _modes(report) == ["overlapping", "overlapping"]
    assert sorted(report.source_index.tolist()) == [0, 1]


def test_scene_with_faithful_prediction_has_no_failures():
    gt = _canvas()
    gt[5:15, 5:15] = 1
    gt[20:35, 30:50] = 2
    gt[25:30, 5:12] = 1
    pred = gt.copy()
    pred[5:15, 15] = 1  # a one-pixel-wide boundary wobble
    report = detect_failures_in_image(pred, gt)
    assert report.counts() == {"missing": 0, "incomplete": 0, "overlapping": 0, "ok": 3}


def test_thresholds_are_adjustable():
    gt, pred = _canvas(), _canvas()
    gt[10:20, 10:20] = 1
    pred[10:17, 10:20] = 1  # coverage 0.7
    strict = detect_failures_in_image(pred, gt)
    lenient = detect_failures_in_image(pred, gt, thresholds=FailureThresholds(complete_above=0.6))
    assert (_modes(strict), _modes(lenient)) == (["incomplete"], ["ok"])


def test_spill_onto_ignored_pixels_does_not_count():
    gt, pred = _canvas(), _canvas()
    gt[10:20, 10:20] = 1
    gt[10:20, 20:30] = 255
    pred[10:20, 10:30] = 1
    report = detect_failures_in_image(pred, gt)
    assert _modes(report) == ["ok"]
    assert report.spill[0] == 0.0


def test_background_and_small_regions_are_not_objects():
    gt = _canvas()
    gt[0:3, 0:2] = 1  # 6 px, below min_object_area 8
    gt[10:20, 10:20] = 2
    labels, classes, _ = objects_from_semantic(gt)
    assert classes.tolist() == [2]
    assert labels.max() == 1


def test_smaller_instance_wins_where_instances_overlap():
    masks = np.zeros((2, 10, 10), bool)
    masks[0, 0:10, 0:10] = True
    masks[1, 2:5, 2:5] = True
    labels, classes, source = objects_from_instances(masks, [3, 4])
    assert labels[3, 3] == 1 + source.tolist().index(1)
    assert classes[source.tolist().index(1)] == 4


def test_assess_objects_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="HxW"):
        assess_objects(np.zeros((4, 4), int), np.zeros(0, int), np.zeros((4, 5), int))


def _failure_dataset(dataset, tmp_path):
    import fiftyone as fo

    gt, pred = _canvas(), _canvas()
    gt[10:20, 10:20] = 1  # missing
    gt[25:35, 10:20] = 1  # ok
    pred[25:35, 10:20] = 1
    gt[10:20, 35:45] = 2  # incomplete
    pred[10:15, 35:45] = 2
    dataset.add_samples(
        [
            fo.Sample(
                filepath=str(tmp_path / "a.png"),
                gt=fo.Segmentation(mask=gt.astype(np.uint8)),
                pred=fo.Segmentation(mask=pred.astype(np.uint8)),
            ),
            fo.Sample(
                filepath=str(tmp_path / "b.png"),
                gt=fo.Segmentation(mask=gt.astype(np.uint8)),
                pred=fo.Segmentation(mask=np.zeros((3, 3), np.uint8)),  # wrong size
            ),
        ]
    )
    dataset.mask_targets = {"gt": {0: "background", 1: "cat", 2: "dog"}}
    dataset.save()
    return dataset


def test_detect_failures_writes_objects_with_modes_and_counts(dataset, tmp_path):
    from samseg_core.stages.failure_modes import detect_failures

    _failure_dataset(dataset, tmp_path)
    summary = detect_failures(dataset, "pred", "gt")
    sample = dataset.first()
    objects = sorted((d.label, d.failure_mode) for d in sample.samseg_failures.detections)
    assert objects == [("cat", "missing"), ("cat", "ok"), ("dog", "incomplete")]
    assert (
        sample.samseg_failures_missing,
        sample.samseg_failures_incomplete,
        sample.samseg_failures_overlapping,
    ) == (
        1,
        1,
        0,
    )
    assert summary.extra["counts"] == {"missing": 1, "incomplete": 1, "overlapping": 0, "ok": 1}


def test_detect_failures_object_masks_match_ground_truth(dataset, tmp_path):
    from samseg_core.labels import masks_from_detections
    from samseg_core.stages.failure_modes import detect_failures

    _failure_dataset(dataset, tmp_path)
    detect_failures(dataset, "pred", "gt")
    sample = dataset.first()
    masks, dets = masks_from_detections(sample.samseg_failures, 40, 60)
    gt = sample.gt.mask
    for mask, det in zip(masks, dets):
        assert mask.sum() == 100 and (gt[mask] == {"cat": 1, "dog": 2}[det.label]).all()


def test_detect_failures_records_bad_sample_and_goes_on(dataset, tmp_path):
    from samseg_core.stages.failure_modes import detect_failures

    _failure_dataset(dataset, tmp_path)
    summary = detect_failures(dataset, "pred", "gt")
    assert (summary.processed, summary.failed) == (1, 1)
    assert "differ in shape" in dataset.values("samseg_failures_error")[1]


def test_detect_failures_from_instances_field(dataset, tmp_path):
    import fiftyone as fo

    from samseg_core.labels import detections_from_masks
    from samseg_core.stages.failure_modes import detect_failures

    pred = _canvas()
    pred[10:20, 10:30] = 1
    masks = np.zeros((2, 40, 60), bool)
    masks[0, 10:20, 10:20] = True
    masks[1, 10:20, 20:30] = True
    dataset.add_sample(
        fo.Sample(
            filepath=str(tmp_path / "a.png"),
            pred=fo.Segmentation(mask=pred.astype(np.uint8)),
            people=detections_from_masks(masks, ["cat", "cat"]),
        )
    )
    dataset.mask_targets = {"pred": {0: "background", 1: "cat"}}
    dataset.save()
    detect_failures(dataset, "pred", None, gt_instances_field="people", eval_key="merged")
    sample = dataset.first()
    assert sample.merged_overlapping == 2
    assert {d.gt_id for d in sample.merged.detections} == {d.id for d in sample.people.detections}


def test_failure_run_is_listed_and_deleted_with_its_fields(dataset, tmp_path):
    from samseg_core.stages.failure_modes import detect_failures

    _failure_dataset(dataset, tmp_path)
    detect_failures(dataset, "pred", "gt")
    listed = dataset.list_runs(method="samseg_failures")
    dataset.delete_run("samseg_failures")
    assert listed == ["samseg_failures"]
    assert not [f for f in dataset.get_field_schema() if f.startswith("samseg_failures")]


def test_detect_failures_operator(dataset, tmp_path):
    import fiftyone.operators as foo

    _failure_dataset(dataset, tmp_path)
    params = {"pred_field": "pred", "gt_field": "gt", "eval_key": "op_failures", "complete_above": 0.4}
    result = foo.execute_operator("@samseg/samseg/detect_failures", {"dataset": dataset, "params": params})
    assert result.error is None
    assert dataset.first().op_failures_incomplete == 0  # 0.5 coverage passes a 0.4 threshold
