"""prompt_study end to end on the real temporary database with a tiny random SAM, and its bounded scoring.

Random weights: these tests check plumbing, bookkeeping and scoring, never refinement quality.
"""

from __future__ import annotations

import tracemalloc
import typing
import warnings

import fiftyone as fo
import fiftyone.operators as foo
import numpy as np
import pytest
from _faults import BatchFailsOnce

from samseg_core import prompt_study
from samseg_core.labels import read_segmentation
from samseg_core.metrics import DatasetIoUAccumulator
from samseg_core.sam_embedding import EmbeddingCache
from samseg_core.testing import tiny_sam

TINY_SAM = "samseg_core.testing:tiny_sam"
STUDY = "@samseg/samseg/prompt_study"


def _maps(samples, field):
    return [read_segmentation(label) for label in samples.values(field)]


def _expected(samples, field, gt_field="ground_truth", num_classes=6):
    acc = DatasetIoUAccumulator(num_classes=num_classes)
    for gt, pred in zip(_maps(samples, gt_field), _maps(samples, field)):
        acc.add(gt, pred)
    return acc


@pytest.fixture
def cache():
    return EmbeddingCache(tiny_sam())


def test_study_config_choices_are_the_study_configurations():
    from samseg_core.stages.prompt_study import STUDY_CONFIGS, StudyConfig

    assert typing.get_args(StudyConfig) == tuple(STUDY_CONFIGS)


def test_prompt_study_writes_every_configuration_and_encodes_each_image_once(scene_dataset, cache):
    from samseg_core.stages.prompt_study import STUDY_CONFIGS

    view = scene_dataset.limit(2)

    table = prompt_study(view, baseline_field="coarse", gt_field="ground_truth", cache=cache)

    assert cache.encoder_calls == 2 and table.extra["encoder_calls"] == 2
    assert [row["config"] for row in table.rows] == ["baseline", *STUDY_CONFIGS]
    for name in STUDY_CONFIGS:
        assert scene_dataset.count(f"study_{name}") == 2
        assert scene_dataset.mask_targets[f"study_{name}"] == scene_dataset.mask_targets["coarse"]
    assert table.num_images == 2 and (table.processed, table.failed) == (2, 0)


def test_the_table_is_a_run_summary_whose_dict_carries_the_rows_and_the_markdown_table(scene_dataset, cache):
    from samseg_core.runner import RunSummary

    table = prompt_study(scene_dataset.limit(1), baseline_field="coarse", configs=("box",), cache=cache)
    out = table.to_dict()

    assert (
        isinstance(table, RunSummary) and table.stage == "prompt_study" and table.label_field == "study_box"
    )
    assert {"stage", "label_field", "processed", "skipped", "failed", "errors", "seconds"} <= set(out)
    assert out["fields"] == {"box": "study_box"} and out["num_images"] == 1
    assert [row["config"] for row in out["rows"]] == ["baseline", "box"]
    assert out["table"].startswith("```") and table.format_table() in out["table"]
    assert str(table) == table.format_table()


def test_prompt_study_table_scores_match_the_metrics_module(scene_dataset, cache):
    from samseg_core.stages.prompt_study import STUDY_CONFIGS, format_table

    configs = {"box": STUDY_CONFIGS["box"], "gated": {"prompts": ("points", "box"), "gate": 0.5}}
    table = prompt_study(
        scene_dataset, configs=configs, baseline_field="coarse", gt_field="ground_truth", cache=cache
    )

    assert [row["config"] for row in table.rows] == ["baseline", "box", "gated"]
    for row in table.rows:
        acc = _expected(scene_dataset, row["field"])
        assert row["miou"] == pytest.approx(acc.summed().miou)
        assert row["mean_image_miou"] == pytest.approx(acc.mean_of_images())
        assert row["pixel_accuracy"] == pytest.approx(acc.summed().pixel_accuracy)
        assert row["delta_miou"] == pytest.approx(row["miou"] - table.rows[0]["miou"])
    assert "gated" in format_table(table) and "box" in table.format_table()


def test_custom_configurations_run_after_the_chosen_ones_with_common_settings(scene_dataset, cache):
    table = prompt_study(
        scene_dataset.limit(1), baseline_field="coarse", cache=cache, configs=("box",),
        custom_configs={"strict": {"prompts": "points+box"}}, common={"gate": 1.0}, field_prefix="mine_",
    )  # fmt: skip

    assert table.fields == {"box": "mine_box", "strict": "mine_strict"}
    strict = table.rows[2]
    assert (
        strict["settings"]
        == "points+box granularity=class selection=baseline_iou gate=1.0 min_change=2.0 protect_regions=True min_predicted_iou=0.7 fill=baseline"
    )
    assert strict["accepted"] == 0.0  # no random-SAM candidate matches its region exactly
    box = table.rows[1]  # the study configuration sets its own gate, which common does not replace
    assert "gate=0.0" in box["settings"] and "fill=background" in box["settings"]


@pytest.mark.parametrize(
    "kwargs, param",
    [
        ({"configs": ()}, "configs"),
        ({"configs": ("box", "not_a_config")}, "configs"),
        ({"custom_configs": {"x": {"gate": 2.0}}}, "custom_configs"),
        ({"custom_configs": {"x": {"prompts": ("box", "loose_box")}}}, "custom_configs"),
        ({"custom_configs": {"x": {"no_such_setting": 1}}}, "custom_configs"),
        ({"custom_configs": {"box": {}}}, "custom_configs"),
        ({"custom_configs": {"a.b": {}}}, "custom_configs"),
        ({"common": {"fill": "nothing"}}, "common"),
        ({"num_classes": 0}, "num_classes"),
        ({"field_prefix": "a.b_"}, "field_prefix"),
    ],
)
def test_bad_configurations_are_refused_before_anything_is_written(scene_dataset, cache, kwargs, param):
    from samseg_core.errors import StageParameterError

    schema = set(scene_dataset.get_field_schema())
    with pytest.raises(StageParameterError) as err:
        prompt_study(scene_dataset, baseline_field="coarse", cache=cache, **kwargs)

    assert err.value.param == param and err.value.remedy
    assert set(scene_dataset.get_field_schema()) == schema and cache.encoder_calls == 0


def test_a_baseline_naming_the_ground_truths_ids_differently_is_refused(scene_dataset, cache):
    from samseg_core.errors import StageParameterError
    from samseg_core.mask_targets import merge_mask_targets

    merge_mask_targets(scene_dataset, "coarse", {1: "not_the_same_class"}, overwrite=True)

    with pytest.raises(StageParameterError) as err:
        prompt_study(scene_dataset, baseline_field="coarse", configs=("box",), cache=cache)

    assert err.value.param == "baseline_field" and scene_dataset.get_field("study_box") is None


def test_the_old_name_semantic_field_still_works_with_a_future_warning(scene_dataset, cache):
    with pytest.warns(FutureWarning, match="baseline_field"):
        table = prompt_study(scene_dataset.limit(1), semantic_field="coarse", configs=("box",), cache=cache)

    assert table.rows[0]["field"] == "coarse"


def test_a_stray_65535_is_scored_as_a_wrong_pixel_without_a_huge_confusion_matrix(scene_dataset, cache):
    """A baseline pixel of 65535 (carried into the refined field) made the old growing confusion matrix
    65536 x 65536 int64 (32 GiB). Only argument names the old code accepted are used here."""
    sample = scene_dataset.first()
    coarse = read_segmentation(sample.coarse).astype(np.uint16)
    coarse[0, 0] = 65535
    sample["coarse"] = fo.Segmentation(mask=coarse)
    sample.save()
    view = scene_dataset.limit(2)

    tracemalloc.start()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # semantic_field is the old name of baseline_field
            table = prompt_study(
                view, configs={"kept": {"prompts": ("box",), "gate": 1.0}}, semantic_field="coarse",
                gt_field="ground_truth", cache=cache,
            )  # fmt: skip
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert peak < 64 * 2**20, f"peak {peak / 2**20:.0f} MiB"
    rows = {row["config"]: row for row in table.rows}
    for config, field in (("baseline", "coarse"), ("kept", "study_kept")):
        assert read_segmentation(view.first()[field])[0, 0] == 65535
        acc = _expected(view, field)  # 65535 is outside the 6 classes: a wrong pixel, not a class of its own
        assert rows[config]["miou"] == pytest.approx(acc.summed().miou)
        assert rows[config]["mean_image_miou"] == pytest.approx(acc.mean_of_images())


def test_study_scores_bound_the_classes_also_when_mask_targets_name_a_huge_id(dataset):
    from samseg_core.mask_targets import merge_mask_targets
    from samseg_core.stages.prompt_study import study_scores

    gt = np.array([[0, 1], [1, 65535]], np.uint16)
    pred = np.array([[0, 1], [65535, 1]], np.uint16)
    dataset.add_sample(
        fo.Sample(filepath="/none.png", gt=fo.Segmentation(mask=gt), pred=fo.Segmentation(mask=pred))
    )
    merge_mask_targets(dataset, "pred", {0: "a", 1: "b", 65535: "void"})

    tracemalloc.start()
    try:
        scores, scored = study_scores(dataset, "gt", {"pred": "pred"}, ignore_index=None)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert peak < 64 * 2**20 and scored == 1
    # gt 65535 is no class (ignored); pred 65535 on a gt 1 pixel is wrong: IoU(0) = 1, IoU(1) = 1 / 2
    assert scores["pred"]["miou"] == pytest.approx(0.75)
    assert scores["pred"]["pixel_accuracy"] == pytest.approx(2 / 3)


def test_ids_from_num_classes_on_are_ignored_in_ground_truth_and_wrong_in_predictions(dataset):
    from samseg_core.stages.prompt_study import study_scores

    gt, pred = np.array([[0, 1, 2, 2, 1]], np.uint8), np.array([[0, 1, 1, 1, 3]], np.uint8)
    dataset.add_sample(
        fo.Sample(filepath="/none.png", gt=fo.Segmentation(mask=gt), pred=fo.Segmentation(mask=pred))
    )

    every, _ = study_scores(dataset, "gt", {"p": "pred"})
    first_two, _ = study_scores(dataset, "gt", {"p": "pred"}, num_classes=2)

    assert every["p"]["miou"] == pytest.approx((1 + 1 / 4 + 0 + 0) / 4)
    assert first_two["p"]["miou"] == pytest.approx((1 + 1 / 2) / 2)
    assert first_two["p"]["pixel_accuracy"] == pytest.approx(2 / 3)


def test_gate_counts_of_a_batch_retried_sample_by_sample_are_not_doubled(scene_dataset, cache):
    configs = {
        "loose": {
            "prompts": ("points", "box"),
            "gate": 0.0,
            "min_change": 0.0,
            "protect_regions": False,
            "min_predicted_iou": 0.0,
        }  # fmt: skip
    }
    clean = prompt_study(
        scene_dataset, configs=configs, baseline_field="coarse", cache=cache, field_prefix="a_"
    )
    flaky = BatchFailsOnce(cache.sam)
    retried = prompt_study(
        scene_dataset, configs=configs, baseline_field="coarse", cache=flaky, field_prefix="b_"
    )

    assert flaky.failed and (retried.processed, retried.failed) == (4, 0)
    assert retried.extra["prompt_sets"] == clean.extra["prompt_sets"]
    assert retried.extra["accepted"] == clean.extra["accepted"] == clean.extra["prompt_sets"]
    assert retried.rows[1]["accepted"] == clean.rows[1]["accepted"] == 1.0


def test_prompt_study_operator_runs_the_chosen_configurations(scene_dataset):
    result = foo.get_operator(STUDY)(
        scene_dataset,
        configs=["box", "points_box_gated"],
        baseline_field="coarse",
        sam=TINY_SAM,
        device="cpu",
    )

    assert [row["config"] for row in result["rows"]] == ["baseline", "box", "points_box_gated"]
    assert scene_dataset.count("study_box") == 4 and scene_dataset.get_field("study_single_point") is None
    assert "points_box_gated" in result["table"]


def _failure_case_dataset(dataset, tmp_path):
    """One image: two class-1 objects (the baseline misses one entirely) and a class-2 object the baseline
    covers only in part; class 3 is exact."""
    from PIL import Image

    gt = np.zeros((64, 80), np.uint8)
    gt[5:20, 5:20] = 1
    gt[40:58, 5:20] = 1
    gt[10:50, 40:60] = 2
    gt[50:60, 65:78] = 3
    baseline = gt.copy()
    baseline[40:58, 5:20] = 0  # a missed object
    baseline[30:50, 40:60] = 0  # half an object
    path = tmp_path / "case.png"
    Image.fromarray(np.stack([gt * 60] * 3, axis=-1)).save(path)
    dataset.add_sample(
        fo.Sample(
            filepath=str(path), ground_truth=fo.Segmentation(mask=gt), coarse=fo.Segmentation(mask=baseline)
        )
    )
    return dataset


def test_the_table_counts_prompt_sets_with_missing_incomplete_and_overlapping_objects(
    dataset, tmp_path, cache
):
    from samseg_core.prompt_failures import class_failure_modes, prompt_set_failures

    _failure_case_dataset(dataset, tmp_path)
    table = prompt_study(
        dataset, baseline_field="coarse", cache=cache, configs=("box", "points_box_gated"), num_classes=4
    )
    box = next(row for row in table.rows if row["config"] == "box")
    # class granularity: prompt sets for classes 0 (background, not an object), 1, 2 and 3
    assert (box["missing"], box["incomplete"], box["overlapping"]) == (1, 1, 0)
    assert (box["missing_accepted"], box["incomplete_accepted"]) == (1, 1)  # the study's gate 0 accepts all
    gated = next(row for row in table.rows if row["config"] == "points_box_gated")
    assert gated["missing_accepted"] <= gated["missing"] == 1
    assert table.rows[0]["missing"] is None
    text = table.format_table()
    assert "missing" in text.splitlines()[0] and "1/1" in text

    gt = dataset.first().ground_truth.mask
    modes = class_failure_modes(dataset.first().coarse.mask, gt)
    assert modes == {1: {"missing"}, 2: {"incomplete"}}
    counts = prompt_set_failures(np.array([1, 2, 3, 1]), np.array([True, False, True, False]), modes)
    assert counts == {"missing": 2, "missing_accepted": 1, "incomplete": 1, "incomplete_accepted": 0,
                      "overlapping": 0, "overlapping_accepted": 0}  # fmt: skip
