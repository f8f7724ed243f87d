"""Regression tests of the data-safety and validation defects the stage-contract issue lists (numbers 1-12).

Each test failed on the code before the contract (commit 5714c13) and passes now. They use argument names the
old code also accepted (``semantic_field=``, ``thresholds=``, ...), so the same file runs against both; the old
names still work for one release with a FutureWarning.
"""

from __future__ import annotations

import importlib
import pkgutil
import threading

import numpy as np
import pytest

import samseg_core as ss
from samseg_core.labels import read_segmentation

TINY_SAM = "samseg_core.testing:tiny_sam"
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


@pytest.fixture(scope="module")
def segformer(tmp_path_factory):
    from samseg_core.testing import save_tiny_segformer
    from samseg_core.testing.scenes import class_names_for

    return str(save_tiny_segformer(tmp_path_factory.mktemp("segformer"), class_names_for(6)))


@pytest.fixture(scope="module")
def segformer_with_more_classes(tmp_path_factory):
    from samseg_core.testing import save_tiny_segformer
    from samseg_core.testing.scenes import class_names_for

    names = {**class_names_for(6), 6: "lamp post", 7: "bench"}
    return str(save_tiny_segformer(tmp_path_factory.mktemp("segformer8"), names))


def _values(ds, name):
    return [None if v is None else (v.to_dict() if hasattr(v, "to_dict") else v) for v in ds.values(name)]


def _user_heatmaps(ds, name):
    import fiftyone as fo

    ds.set_values(name, [fo.Heatmap(map=np.full((3, 3), 0.5, np.float32)) for _ in range(len(ds))])


def _user_detections(ds, name):
    import fiftyone as fo

    ds.set_values(
        name, [fo.Detections(detections=[fo.Detection(label="mine", bounding_box=[0, 0, 1, 1])])] * len(ds)
    )


# 1. skip_existing=True checked only the primary output: a user's secondary field was overwritten


def test_1_resume_never_overwrites_a_users_confidence_field(scene_dataset, segformer):
    _user_heatmaps(scene_dataset, "my_conf")
    before = [h.map.tobytes() for h in scene_dataset.values("my_conf")]
    with pytest.raises(ValueError, match="my_conf"):
        ss.run_baseline(
            scene_dataset, model=segformer, confidence_field="my_conf", skip_existing=True, device="cpu"
        )
    assert [h.map.tobytes() for h in scene_dataset.values("my_conf")] == before


def test_1_resume_never_overwrites_a_users_mask_detections(scene_dataset):
    _user_detections(scene_dataset, "my_masks")
    before = _values(scene_dataset, "my_masks")
    with pytest.raises(ValueError, match="my_masks"):
        ss.semantic_voting(
            scene_dataset,
            semantic_field="coarse",
            masks="slic",
            instances_field="my_masks",
            skip_existing=True,
        )
    assert _values(scene_dataset, "my_masks") == before


def test_1_resume_never_overwrites_a_users_regions_field(scene_dataset):
    _user_detections(scene_dataset, "my_regions")
    before = _values(scene_dataset, "my_regions")
    with pytest.raises(ValueError, match="my_regions"):
        ss.refine_with_sam(
            scene_dataset, semantic_field="coarse", sam=TINY_SAM, instances_field="my_regions",
            skip_existing=True, device="cpu",
        )  # fmt: skip
    assert _values(scene_dataset, "my_regions") == before


# 2. a user field named <label_field>_error was overwritten


def test_2_a_users_field_named_like_the_error_field_is_refused(scene_dataset, segformer):
    scene_dataset.set_values("seg_error", ["my own note"] * len(scene_dataset))
    sample = scene_dataset.first()
    sample.filepath = "/no/such/image.png"  # this sample fails: the old code wrote its error into seg_error
    sample.save()
    with pytest.raises(ValueError, match="seg_error"):
        ss.run_baseline(scene_dataset, model=segformer, label_field="seg", device="cpu")
    assert scene_dataset.values("seg_error") == ["my own note"] * len(scene_dataset)


# 3. two stages given one mask_dir overwrote each other's PNGs


def test_3_two_stages_sharing_a_mask_dir_keep_their_own_files(scene_dataset, segformer, tmp_path):
    masks = tmp_path / "masks"
    ss.run_baseline(scene_dataset, model=segformer, label_field="first", mask_dir=str(masks), device="cpu")
    first = [read_segmentation(label).copy() for label in scene_dataset.values("first")]
    ss.semantic_voting(scene_dataset, semantic_field="coarse", masks="slic", label_field="second",
                       instances_field=None, mask_dir=str(masks))  # fmt: skip
    after = [read_segmentation(label) for label in scene_dataset.values("first")]
    assert all(np.array_equal(a, b) for a, b in zip(first, after))
    paths = scene_dataset.values("first.mask_path") + scene_dataset.values("second.mask_path")
    assert len(set(paths)) == 2 * len(scene_dataset)


# 4. QA stages deleted the previous run's fields before validating their inputs


@pytest.mark.parametrize("bad", [{"pred_field": "corase"}, {"pred_field": "coarse", "batch_size": 0}])
def test_4_a_bad_rerun_keeps_the_previous_evaluation(scene_dataset, bad):
    ss.evaluate_iou(scene_dataset, "coarse", gt_field="ground_truth", eval_key="ev")
    before = scene_dataset.values("ev_miou")
    kwargs = {"gt_field": "ground_truth", "eval_key": "ev", "overwrite": True, **bad}
    with pytest.raises(ValueError):
        ss.evaluate_iou(scene_dataset, kwargs.pop("pred_field"), **kwargs)
    assert scene_dataset.values("ev_miou") == before
    assert "ev" in scene_dataset.list_runs()


# 5. mask targets were merged before the checks that then raised


def test_5_a_refused_run_adds_no_mask_targets(scene_dataset, segformer_with_more_classes):
    before = dict(scene_dataset.mask_targets["ground_truth"])
    with pytest.raises(ValueError):
        ss.run_baseline(
            scene_dataset, model=segformer_with_more_classes, label_field="ground_truth", device="cpu"
        )
    scene_dataset.reload()
    assert scene_dataset.mask_targets["ground_truth"] == before


# 7. a batch whose values were all None failed with "Cannot infer an appropriate type"


def test_7_a_batch_of_none_values_is_written_as_none(scene_dataset):
    import fiftyone as fo

    scene_dataset.add_sample_field("empty_pred", fo.EmbeddedDocumentField, embedded_doc_type=fo.Segmentation)
    summary = ss.evaluate_iou(scene_dataset, "empty_pred", gt_field="ground_truth", eval_key="none_ev")
    assert summary.failed == 0
    assert scene_dataset.values("none_ev_miou") == [None] * len(scene_dataset)


# 8. label_field == instances_field was accepted and dropped the segmentation


def test_8_voting_refuses_one_field_for_two_outputs(scene_dataset):
    with pytest.raises(ValueError, match="ssa"):
        ss.semantic_voting(
            scene_dataset, semantic_field="coarse", masks="slic", label_field="ssa", instances_field="ssa"
        )
    assert scene_dataset.get_field("ssa") is None


# 9. the temporary PNG name was fixed, so two writers of one sample raced


def test_9_concurrent_writers_of_one_mask_never_fail(tmp_path):
    from samseg_core.labels import segmentation_from_array

    errors = []

    def write(value: int) -> None:
        for _ in range(40):
            try:
                segmentation_from_array(np.full((64, 64), value, np.uint8), mask_dir=tmp_path, name="same")
            except Exception as err:  # noqa: PERF203
                errors.append(err)

    threads = [threading.Thread(target=write, args=(v,)) for v in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert [p.name for p in tmp_path.iterdir()] == ["same.png"]


# 10. samseg_core.qa_summary was the function on first access and the module afterwards


def test_10_qa_summary_stays_the_function_after_every_submodule_is_imported():
    first = ss.qa_summary
    for info in pkgutil.walk_packages(ss.__path__, prefix="samseg_core."):
        if ".testing" not in info.name:
            importlib.import_module(info.name)
    assert callable(ss.qa_summary) and ss.qa_summary is first


# 11. absurd values were accepted


def test_11_negative_failure_thresholds_are_refused(scene_dataset):
    with pytest.raises(ValueError, match="missing_below"):
        ss.detect_failures(scene_dataset, "coarse", "ground_truth", thresholds={"missing_below": -1.0})
    assert not scene_dataset.list_runs()


def test_11_negative_region_area_is_refused(scene_dataset):
    with pytest.raises(ValueError, match="min_region_area"):
        ss.refine_with_sam(
            scene_dataset, semantic_field="coarse", sam=TINY_SAM, min_region_area=-5, device="cpu"
        )
    assert scene_dataset.get_field("sam_refined") is None


def test_11_negative_max_samples_is_refused(scene_dataset):
    ss.evaluate_iou(scene_dataset, "coarse", gt_field="ground_truth", eval_key="ev")
    with pytest.raises(ValueError, match="max_samples"):
        ss.build_relabel_queue(scene_dataset, eval_key="ev", max_samples=-1)
    assert not scene_dataset.count_sample_tags()


def test_11_prediction_equal_to_ground_truth_is_refused(scene_dataset):
    with pytest.raises(ValueError, match="ground_truth"):
        ss.evaluate_iou(scene_dataset, "ground_truth", gt_field="ground_truth", eval_key="self")
    assert not scene_dataset.list_runs()


def test_11_disagreeing_mask_targets_are_refused(scene_dataset):
    scene_dataset.mask_targets = {**scene_dataset.mask_targets, "coarse": {1: "zebra"}}
    scene_dataset.save()
    with pytest.raises(ValueError, match="zebra"):
        ss.evaluate_iou(scene_dataset, "coarse", gt_field="ground_truth", eval_key="mixed")
    assert not scene_dataset.list_runs()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_11_cuda_without_a_gpu_is_refused_not_run_on_cpu(scene_dataset):
    with pytest.raises(ValueError, match="cuda"):
        ss.semantic_voting(scene_dataset, semantic_field="coarse", masks="slic", device="cuda")
    assert scene_dataset.get_field("ssa") is None


# 12. checks ran per sample: a missing input field failed every sample and left an error field behind


def test_12_a_misspelt_input_field_is_refused_up_front(scene_dataset):
    with pytest.raises(ValueError, match="corase"):
        ss.evaluate_iou(scene_dataset, "corase", gt_field="ground_truth", eval_key="ev")
    assert not [name for name in scene_dataset.get_field_schema() if name.startswith("ev")]


def test_12_the_form_keeps_a_zero_batch_size_and_refuses_it(scene_dataset):
    import fiftyone.operators as foo

    params = {"pred_field": "coarse", "gt_field": "ground_truth", "eval_key": "op", "batch_size": 0}
    try:
        result = foo.execute_operator(
            "@samseg/samseg/evaluate_iou", {"view": scene_dataset.view(), "params": params}
        )
        error = result.error
    except Exception as err:
        error = str(err)
    assert error and "batch_size" in error
    assert "op" not in scene_dataset.list_runs()


# bookkeeping: semantic_voting(cache=c) loaded a fresh vit_b, then failed because the cache was another model's


def test_voting_with_a_cache_uses_the_caches_model(scene_dataset):
    from samseg_core.sam_embedding import EmbeddingCache
    from samseg_core.testing import tiny_sam

    cache = EmbeddingCache(tiny_sam())
    summary = ss.semantic_voting(
        scene_dataset, semantic_field="coarse", masks="sam", cache=cache, points_per_side=4,
        pred_iou_thresh=0.0, stability_score_thresh=0.0, preset=None, device="cpu",
    )  # fmt: skip
    assert summary.processed == len(scene_dataset) and summary.failed == 0
    assert cache.encoder_calls == len(scene_dataset)


# 13. the ignore value 255 in a baseline became a class in voting


def test_13_the_ignore_value_never_becomes_a_class(scene_dataset):
    import fiftyone as fo

    masks = []
    for seg in scene_dataset.values("coarse"):
        mask = seg.mask.copy()
        height, width = mask.shape
        unlabelled = np.zeros(mask.shape, bool)
        unlabelled[: height // 2] = True
        unlabelled[: height // 2, ::5] = False  # every region keeps a few real votes among the 255s
        mask[unlabelled] = 255
        masks.append(fo.Segmentation(mask=mask))
    scene_dataset.set_values("with_void", masks)
    ss.semantic_voting(scene_dataset, semantic_field="with_void", masks="slic", instances_field="ssa_masks")
    voted = [d.label for dets in scene_dataset.values("ssa_masks") for d in dets.detections]
    assert voted and "255" not in voted
    assert 255 not in (scene_dataset.get_mask_targets("ssa") or {})
    for seg, base in zip(scene_dataset.values("ssa"), masks):
        # the only 255s left are pixels no voting mask owns: fewer than the baseline had
        assert (read_segmentation(seg) == 255).sum() < (base.mask == 255).sum()
