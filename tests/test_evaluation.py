"""IoU evaluation, agreement without ground truth, runs bookkeeping and the evaluate_segmentations custom metric."""

from __future__ import annotations

import numpy as np
import pytest

TARGETS = {0: "background", 1: "cat", 2: "dog"}


def _seg(mask):
    import fiftyone as fo

    return fo.Segmentation(mask=np.asarray(mask, dtype=np.uint8))


def _add(dataset, tmp_path, masks_per_sample, targets=TARGETS):
    """Adds one sample per dict of {field: mask or None}; sets mask targets on every field."""
    import fiftyone as fo

    samples = []
    for i, fields in enumerate(masks_per_sample):
        sample = fo.Sample(filepath=str(tmp_path / f"img{i}.png"))
        for name, mask in fields.items():
            sample[name] = None if mask is None else _seg(mask)
        samples.append(sample)
    dataset.add_samples(samples)
    names = {name for fields in masks_per_sample for name in fields}
    dataset.mask_targets = {name: dict(targets) for name in names}
    dataset.save()
    return dataset


# gt / pred of the hand-computed example (255 = ignored):
#   gt   0 0 1 1      pred 0 1 1 1
#        0 0 1 255         0 0 2 1
# class 0: gt 4 px, pred 3 px (valid), tp 3 -> IoU 3/4
# class 1: gt 3 px, pred 3 px (valid; the pixel over 255 is not counted), tp 2 -> IoU 2/4
# class 2: only in the prediction, 1 px, tp 0 -> IoU 0
GT = [[0, 0, 1, 1], [0, 0, 1, 255]]
PRED = [[0, 1, 1, 1], [0, 0, 2, 1]]


def test_per_sample_miou_matches_hand_computed_values(dataset, tmp_path):
    from samseg_core.stages.evaluation import evaluate_iou

    _add(dataset, tmp_path, [{"gt": GT, "pred": PRED}])
    evaluate_iou(dataset, "pred", "gt", eval_key="ev")
    sample = dataset.first()
    assert sample.ev_miou == pytest.approx((3 / 4 + 2 / 4 + 0) / 3)
    assert sample.ev_accuracy == pytest.approx(5 / 7)


def test_class_only_in_prediction_gets_iou_zero_by_name(dataset, tmp_path):
    from samseg_core.stages.evaluation import evaluate_iou

    _add(dataset, tmp_path, [{"gt": GT, "pred": PRED}])
    evaluate_iou(dataset, "pred", "gt", eval_key="ev")
    assert dataset.first().ev_class_iou == pytest.approx({"background": 0.75, "cat": 0.5, "dog": 0.0})


def test_reduce_zero_label_ignores_zero_and_shifts_ids(dataset, tmp_path):
    from samseg_core.stages.evaluation import evaluate_iou

    # raw gt 0 1 2 / 2 2 0 -> reduced: ign 0 1 / 1 1 ign; pred (reduced ids) 1 0 1 / 1 0 0
    # class 0: gt 1, pred 2 (valid), tp 1 -> 1/2; class 1: gt 3, pred 2, tp 2 -> 2/3
    _add(dataset, tmp_path, [{"gt": [[0, 1, 2], [2, 2, 0]], "pred": [[1, 0, 1], [1, 0, 0]]}])
    dataset.mask_targets = {**dataset.mask_targets, "pred": {k - 1: v for k, v in TARGETS.items() if k > 0}}
    dataset.save()
    evaluate_iou(dataset, "pred", "gt", eval_key="ev", reduce_zero_label=True)
    sample = dataset.first()
    assert sample.ev_miou == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert sample.ev_accuracy == pytest.approx(3 / 4)


def test_empty_prediction_scores_zero(dataset, tmp_path):
    from samseg_core.stages.evaluation import evaluate_iou

    _add(dataset, tmp_path, [{"gt": GT, "pred": np.full((2, 4), 255)}])
    evaluate_iou(dataset, "pred", "gt", eval_key="ev")
    sample = dataset.first()
    assert (sample.ev_miou, sample.ev_accuracy) == (0.0, 0.0)


def test_missing_prediction_label_leaves_fields_empty(dataset, tmp_path):
    from samseg_core.stages.evaluation import evaluate_iou

    _add(dataset, tmp_path, [{"gt": GT, "pred": PRED}, {"gt": GT, "pred": None}])
    summary = evaluate_iou(dataset, "pred", "gt", eval_key="ev")
    assert dataset.values("ev_miou")[1] is None
    assert summary.extra["fields"]["pred"]["missing_predictions"] == 1


def test_class_subset_restricts_the_average(dataset, tmp_path):
    from samseg_core.stages.evaluation import evaluate_iou

    _add(dataset, tmp_path, [{"gt": GT, "pred": PRED}])
    evaluate_iou(dataset, "pred", "gt", eval_key="ev", classes=["cat", "dog"])
    assert dataset.first().ev_miou == pytest.approx((2 / 4 + 0) / 2)


def test_dataset_results_hold_both_reductions(dataset, tmp_path):
    from samseg_core.stages.evaluation import evaluate_iou

    # image A: perfect single class 1 -> mIoU 1. image B: gt 0 0 1 1, pred 0 1 1 1 -> (1/2 + 2/3) / 2.
    # summed: class 0 gt 2 pred 1 tp 1 -> 1/2; class 1 gt 6 pred 7 tp 6 -> 6/7.
    _add(
        dataset,
        tmp_path,
        [{"gt": [[1, 1, 1, 1]], "pred": [[1, 1, 1, 1]]}, {"gt": [[0, 0, 1, 1]], "pred": [[0, 1, 1, 1]]}],
    )
    evaluate_iou(dataset, "pred", "gt", eval_key="ev")
    results = dataset.load_run_results("ev", cache=False).fields["pred"]
    assert results["summed"]["miou"] == pytest.approx((1 / 2 + 6 / 7) / 2)
    assert results["mean_of_images"] == pytest.approx((1 + (1 / 2 + 2 / 3) / 2) / 2)


def test_mask_of_wrong_size_is_a_per_sample_error(dataset, tmp_path):
    from samseg_core.stages.evaluation import evaluate_iou

    _add(dataset, tmp_path, [{"gt": GT, "pred": [[0, 1]]}, {"gt": GT, "pred": PRED}])
    summary = evaluate_iou(dataset, "pred", "gt", eval_key="ev")
    errors = dataset.values("ev_miou_error")
    assert (summary.failed, summary.processed) == (1, 1)
    assert "differ in shape" in errors[0] and errors[1] is None


def test_compare_fields_get_delta_against_reference(dataset, tmp_path):
    from samseg_core.stages.evaluation import evaluate_iou

    _add(dataset, tmp_path, [{"gt": GT, "pred": PRED, "better": np.where(np.array(GT) == 255, 0, GT)}])
    summary = evaluate_iou(dataset, "pred", "gt", eval_key="ev", compare_fields=["better"])
    sample = dataset.first()
    assert sample.ev_better_miou == pytest.approx(1.0)
    assert sample.ev_better_delta == pytest.approx(1.0 - sample.ev_miou)
    assert summary.extra["fields"]["better"]["delta_summed"] == pytest.approx(1.0 - sample.ev_miou)


def test_boundary_iou_is_one_for_a_perfect_prediction(dataset, tmp_path):
    from samseg_core.stages.evaluation import evaluate_iou

    gt = np.zeros((20, 20), np.uint8)
    gt[5:15, 5:15] = 1
    _add(dataset, tmp_path, [{"gt": gt, "pred": gt}])
    evaluate_iou(dataset, "pred", "gt", eval_key="ev")
    assert dataset.first().ev_boundary_iou == pytest.approx(1.0)


def test_run_is_listed_and_reloads(dataset, tmp_path):
    from samseg_core.stages.evaluation import evaluate_iou

    _add(dataset, tmp_path, [{"gt": GT, "pred": PRED}])
    evaluate_iou(dataset, "pred", "gt", eval_key="ev")
    assert dataset.list_runs(method="samseg_iou") == ["ev"]
    reloaded = dataset.load_run_results("ev", cache=False)
    assert reloaded.fields["pred"]["summed"]["per_class_iou"]["cat"] == pytest.approx(0.5)


def test_rename_run_renames_its_fields(dataset, tmp_path):
    from samseg_core.stages.evaluation import evaluate_iou

    _add(dataset, tmp_path, [{"gt": GT, "pred": PRED}])
    evaluate_iou(dataset, "pred", "gt", eval_key="ev")
    dataset.rename_run("ev", "ev2")
    assert dataset.list_runs() == ["ev2"]
    assert dataset.has_field("ev2_miou") and not dataset.has_field("ev_miou")


def test_delete_run_deletes_its_fields(dataset, tmp_path):
    from samseg_core.stages.evaluation import evaluate_iou

    _add(dataset, tmp_path, [{"gt": GT, "pred": PRED, "other": GT}])
    evaluate_iou(dataset, "pred", "gt", eval_key="ev", compare_fields=["other"])
    dataset.delete_run("ev")
    assert dataset.list_runs() == []
    assert not [f for f in dataset.get_field_schema() if f.startswith("ev_")]


def test_rerun_replaces_previous_values(dataset, tmp_path):
    from samseg_core.stages.evaluation import evaluate_iou

    _add(dataset, tmp_path, [{"gt": GT, "pred": PRED, "other": GT}])
    evaluate_iou(dataset, "pred", "gt", eval_key="ev")
    evaluate_iou(dataset, "other", "gt", eval_key="ev", overwrite=True)
    assert dataset.first().ev_miou == pytest.approx(1.0)


def test_agreement_iou_and_disagreement_heatmap(dataset, tmp_path):
    from samseg_core.stages.agreement import agreement_iou

    # a 0 0 1 1, b 0 1 1 1: class 0 -> 1/2, class 1 -> 2/3; they disagree on pixel 1
    _add(dataset, tmp_path, [{"a": [[0, 0, 1, 1]], "b": [[0, 1, 1, 1]]}])
    agreement_iou(dataset, baseline_field="a", pred_field="b", eval_key="agree")
    sample = dataset.first()
    assert sample.agree_miou == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert sample.agree_accuracy == pytest.approx(3 / 4)
    np.testing.assert_array_equal(sample.agree_disagreement.map, [[0, 1, 0, 0]])


def test_agreement_heatmap_uses_sam_scores_where_maps_agree(dataset, tmp_path):
    import fiftyone as fo

    from samseg_core.stages.agreement import agreement_iou

    _add(dataset, tmp_path, [{"a": [[0, 0, 1, 1]], "b": [[0, 1, 1, 1]]}])
    sample = dataset.first()
    # one SAM mask on the right half (x 2..3) with predicted_iou 0.9 and stability 0.8 -> score 0.8
    det = fo.Detection(label="m", bounding_box=[0.5, 0.0, 0.5, 1.0], mask=np.ones((1, 2), bool))
    det["predicted_iou"], det["stability_score"] = 0.9, 0.8
    sample["sam"] = fo.Detections(detections=[det])
    sample.save()
    agreement_iou(
        dataset, baseline_field="a", pred_field="b", eval_key="agree", masks_field="sam", uncovered=0.5
    )
    np.testing.assert_allclose(dataset.first().agree_disagreement.map, [[0.5, 1.0, 0.2, 0.2]], atol=1e-6)


def _metric_dataset(dataset, tmp_path):
    return _add(
        dataset,
        tmp_path,
        [{"gt": [[1, 1, 1, 1]], "pred": [[1, 1, 1, 1]]}, {"gt": [[0, 0, 1, 1]], "pred": [[0, 1, 1, 1]]}],
    )


def test_custom_metric_reports_miou_inside_evaluate_segmentations(dataset, tmp_path):
    _metric_dataset(dataset, tmp_path)
    results = dataset.evaluate_segmentations(
        "pred", gt_field="gt", eval_key="fo_eval", custom_metrics=["@samseg/samseg/miou"]
    )
    assert results.metrics()["miou"] == pytest.approx((1 / 2 + 6 / 7) / 2)
    assert dataset.values("fo_eval_miou") == pytest.approx([1.0, (1 / 2 + 2 / 3) / 2])


def test_custom_metric_field_follows_evaluation_rename_and_delete(dataset, tmp_path):
    _metric_dataset(dataset, tmp_path)
    dataset.evaluate_segmentations(
        "pred", gt_field="gt", eval_key="fo_eval", custom_metrics=["@samseg/samseg/miou"]
    )
    dataset.rename_evaluation("fo_eval", "fo_eval2")
    renamed = dataset.has_field("fo_eval2_miou")
    dataset.delete_evaluation("fo_eval2")
    assert renamed and not dataset.has_field("fo_eval2_miou")


def test_evaluate_iou_operator_runs_immediately(dataset, tmp_path):
    import fiftyone.operators as foo

    _add(dataset, tmp_path, [{"gt": GT, "pred": PRED}])
    result = foo.execute_operator(
        "@samseg/samseg/evaluate_iou",
        {"dataset": dataset, "params": {"pred_field": "pred", "gt_field": "gt", "eval_key": "op"}},
    )
    assert result.error is None
    assert dataset.first().op_miou == pytest.approx((3 / 4 + 2 / 4) / 3)


def test_agreement_iou_operator(dataset, tmp_path):
    import fiftyone.operators as foo

    _add(dataset, tmp_path, [{"a": [[0, 0, 1, 1]], "b": [[0, 1, 1, 1]]}])
    params = {"pred_field": "a", "baseline_field": "b", "eval_key": "agree"}
    result = foo.execute_operator("@samseg/samseg/agreement_iou", {"dataset": dataset, "params": params})
    assert result.error is None
    assert dataset.first().agree_accuracy == pytest.approx(3 / 4)


def test_evaluate_iou_operator_delegated(dataset, tmp_path):
    import fiftyone.operators as foo
    from fiftyone.operators.delegated import DelegatedOperationService

    _add(dataset, tmp_path, [{"gt": GT, "pred": PRED}])
    operator = foo.get_operator("@samseg/samseg/evaluate_iou")
    queued = operator(dataset, "pred", gt_field="gt", eval_key="dl", delegate=True)
    service = DelegatedOperationService()
    service.execute_operation(service.get(queued.result["id"]))
    dataset.reload()
    assert dataset.first().dl_miou == pytest.approx((3 / 4 + 2 / 4) / 3)


def test_scene_evaluation_scores_degraded_prediction_below_ground_truth(dataset, tmp_path):
    import fiftyone as fo

    from samseg_core.mask_targets import merge_mask_targets
    from samseg_core.stages.evaluation import evaluate_iou
    from samseg_core.testing import degrade_prediction, make_scenes

    scenes = make_scenes(2, seed=0)
    dataset.add_samples(
        [
            fo.Sample(
                filepath=str(tmp_path / f"s{i}.png"),
                ground_truth=_seg(scene.semantic),
                perfect=_seg(scene.semantic),
                coarse=_seg(degrade_prediction(scene, seed=i)),
            )
            for i, scene in enumerate(scenes)
        ]
    )
    merge_mask_targets(dataset, "ground_truth", scenes[0].class_names)
    evaluate_iou(dataset, "coarse", "ground_truth", eval_key="ev", compare_fields=["perfect"])
    coarse, perfect = dataset.values("ev_miou"), dataset.values("ev_perfect_miou")
    assert perfect == pytest.approx([1.0, 1.0])
    assert all(0.0 < c < 1.0 for c in coarse)


def test_a_new_run_refuses_to_write_over_a_users_field_of_the_same_name(dataset):
    import fiftyone as fo

    from samseg_core.errors import FieldExistsError
    from samseg_core.stages.evaluation import evaluate_iou

    gt = np.array([[1, 1], [2, 2]], dtype=np.uint8)
    dataset.add_sample(
        fo.Sample(
            filepath="/tmp/x.png", gt=fo.Segmentation(mask=gt), pred=fo.Segmentation(mask=gt), mine_miou=7.0
        )
    )

    with pytest.raises(FieldExistsError, match="mine_miou"):
        evaluate_iou(dataset, "pred", gt_field="gt", eval_key="mine")
    assert dataset.first().mine_miou == 7.0
    assert "mine" not in dataset.list_runs()


def test_rerunning_an_existing_run_without_overwrite_says_how(dataset):
    import fiftyone as fo

    from samseg_core.errors import FieldExistsError
    from samseg_core.stages.evaluation import evaluate_iou

    gt = np.array([[1, 1], [2, 2]], dtype=np.uint8)
    dataset.add_sample(
        fo.Sample(filepath="/tmp/x.png", gt=fo.Segmentation(mask=gt), pred=fo.Segmentation(mask=gt))
    )
    evaluate_iou(dataset, "pred", gt_field="gt", eval_key="again")

    with pytest.raises(FieldExistsError, match="overwrite=True"):
        evaluate_iou(dataset, "pred", gt_field="gt", eval_key="again", overwrite=False)
    evaluate_iou(dataset, "pred", gt_field="gt", eval_key="again", overwrite=True)  # replaces our own run
    assert dataset.first().again_miou == 1.0
