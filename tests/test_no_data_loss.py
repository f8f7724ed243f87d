"""No data loss: a stage changes nothing it did not create, and with overwrite=True only its own fields.

The dataset is snapshotted (every sample field's values, mask targets, sample tags, label tags, saved views,
info and classes) before and after each stage; stages that have not landed yet are skipped.
"""

from __future__ import annotations

import importlib.util

import pytest

from samseg_core.testing.snapshots import changes, new_fields, snapshot


@pytest.fixture
def curated(dataset, tmp_path):
    """Scenes with ground truth, a coarse prediction and what a user builds around them: a note field, sample
    tags, label tags, saved views, info."""
    import fiftyone as fo
    from fiftyone import ViewField as F

    from samseg_core.mask_targets import merge_mask_targets
    from samseg_core.testing import degrade_prediction, make_scenes, write_scene_images

    scenes = make_scenes(3, seed=0, size=(96, 112))
    paths = write_scene_images(scenes, tmp_path / "images")
    dataset.add_samples(
        [
            fo.Sample(
                filepath=str(path),
                ground_truth=fo.Segmentation(mask=scene.semantic.astype("uint8")),
                coarse=fo.Segmentation(mask=degrade_prediction(scene, seed=i).astype("uint8")),
            )
            for i, (scene, path) in enumerate(zip(scenes, paths))
        ]
    )
    merge_mask_targets(dataset, "ground_truth", scenes[0].class_names)
    merge_mask_targets(dataset, "coarse", scenes[0].class_names)
    ds = dataset
    ds.take(2, seed=0).tag_samples("reviewed")
    ds.limit(2).tag_labels("checked", label_fields="coarse")
    ds.save_view("has_gt", ds.match(F("ground_truth") != None))  # noqa: E711
    ds.save_view("reviewed", ds.match_tags("reviewed"))
    ds.info["owner"] = "qa-team"
    ds.set_values("note", [f"sample {i}" for i in range(len(ds))])
    ds.save()
    return ds


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Tiny models every stage needs (built once): a saved SegFormer, CLIP / BLIP / CLIPSeg objects."""
    from samseg_core.testing import save_tiny_segformer
    from samseg_core.testing.scenes import class_names_for

    out = {"segformer": str(save_tiny_segformer(tmp_path_factory.mktemp("segformer"), class_names_for(6)))}
    if importlib.util.find_spec("samseg_core.testing.tiny_engine_models") is not None:
        from samseg_core.testing import tiny_engine_models as tiny

        out.update(clip=tiny.tiny_clip(), captioner=tiny.tiny_captioner(), clipseg=tiny.tiny_clipseg_scorer())
    return out


TINY_SAM = "samseg_core.testing:tiny_sam"
RANDOM_AMG = dict(amg_preset="default", points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)


def _baseline(ds, models, overwrite=False):
    from samseg_core.stages.baseline import run_baseline

    return run_baseline(
        ds, model=models["segformer"], label_field="baseline", confidence_field="baseline_conf", device="cpu",
        overwrite=overwrite,
    )  # fmt: skip


def _voting(ds, models, overwrite=False):
    from samseg_core.stages.voting import semantic_voting

    return semantic_voting(
        ds, baseline_field="coarse", sam=TINY_SAM, device="cpu", overwrite=overwrite, **RANDOM_AMG
    )


def _refinement(ds, models, overwrite=False):
    from samseg_core.stages.refinement import refine_with_sam

    return refine_with_sam(
        ds,
        baseline_field="coarse",
        sam=TINY_SAM,
        device="cpu",
        instances_field="sam_regions",
        overwrite=overwrite,
    )


def _engine(ds, models, overwrite=False):
    from samseg_core.stages.engine import open_vocab_labels

    return open_vocab_labels(
        ds, masks="slic", mask_options={"n_segments": 4}, baseline_fields=["coarse"], semantic_models=(),
        device="cpu", min_area=1, clip=models["clip"], captioner=models["captioner"], clipseg=models["clipseg"],
        overwrite=overwrite,
    )  # fmt: skip


def _evaluate_iou(ds, models, overwrite=False):
    from samseg_core.stages.evaluation import evaluate_iou

    return evaluate_iou(ds, "coarse", gt_field="ground_truth", eval_key="nd_iou", overwrite=overwrite)


def _detect_failures(ds, models, overwrite=False):
    from samseg_core.stages.failure_modes import detect_failures

    return detect_failures(ds, "coarse", gt_field="ground_truth", overwrite=overwrite)


STAGES = {
    "baseline": ("samseg_core.stages.baseline", _baseline),
    "voting": ("samseg_core.stages.voting", _voting),
    "refinement": ("samseg_core.stages.refinement", _refinement),
    "engine": ("samseg_core.stages.engine", _engine),
    "evaluate_iou": ("samseg_core.stages.evaluation", _evaluate_iou),
    "detect_failures": ("samseg_core.stages.evaluation", _detect_failures),
}


def _stage(name):
    module, run = STAGES[name]
    importlib.import_module(module)  # a stage that fails to import must fail these tests, not skip them
    return run


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_changes_nothing_it_did_not_create(curated, models, name):
    run = _stage(name)
    before = snapshot(curated)
    run(curated, models)
    after = snapshot(curated)
    assert changes(before, after) == {"fields": set(), "mask_targets": set(), "other": set()}
    assert new_fields(before, after)  # it did write something


@pytest.mark.parametrize("name", sorted(STAGES))
def test_rerun_without_overwrite_refuses_and_changes_nothing(curated, models, name):
    run = _stage(name)
    run(curated, models)
    before = snapshot(curated)
    with pytest.raises(ValueError):  # FieldExistsError, MaskTargetConflict, an existing run key
        run(curated, models)
    assert snapshot(curated) == before


@pytest.mark.parametrize("name", sorted(STAGES))
def test_overwrite_changes_only_the_stages_own_fields(curated, models, name):
    run = _stage(name)
    initial = snapshot(curated)
    run(curated, models)
    own = new_fields(initial, snapshot(curated))
    # make the stage's own values differ from what it will write, so an overwrite is visible
    for field in own:
        curated.set_values(field, [None] * len(curated))
    before = snapshot(curated)
    run(curated, models, overwrite=True)
    after = snapshot(curated)
    changed = changes(before, after)
    assert changed["fields"] and changed["fields"] <= own
    assert changed["mask_targets"] <= own and not changed["other"]


def _evaluated(curated):
    from samseg_core.stages.evaluation import evaluate_iou
    from samseg_core.stages.failure_modes import detect_failures

    evaluate_iou(curated, "coarse", gt_field="ground_truth", eval_key="nd_iou")
    detect_failures(curated, "coarse", gt_field="ground_truth", eval_key="coarse_failures")
    return curated


def test_relabel_queue_only_adds_its_own_tags_and_views(curated):
    from samseg_core.stages.curation import build_relabel_queue

    dataset = _evaluated(curated)
    before = snapshot(dataset)
    build_relabel_queue(
        dataset, eval_key="nd_iou", name="relabel", failures_key="coarse_failures", max_samples=2
    )
    after = snapshot(dataset)

    changed = changes(before, after)
    assert after["sample_tags"].get("relabel")  # it did queue samples
    assert changed["mask_targets"] == set() and changed["fields"] <= {"tags", "coarse_failures"}
    for old, new in zip(before["fields"]["tags"], after["fields"]["tags"]):
        assert set(old) <= set(new) and set(new) - set(old) <= {
            "relabel"
        }  # user tags kept, only its own added
    assert {k: after["saved_views"][k] for k in before["saved_views"]} == before["saved_views"]
    assert all(name.startswith("relabel") for name in set(after["saved_views"]) - set(before["saved_views"]))
    assert all(after["label_tags"].get(tag) == count for tag, count in before["label_tags"].items())
    failures_before = [_without_label_tags(v) for v in before["fields"]["coarse_failures"]]
    assert failures_before == [_without_label_tags(v) for v in after["fields"]["coarse_failures"]]


def _without_label_tags(value):
    if isinstance(value, dict):
        return {k: _without_label_tags(v) for k, v in value.items() if k != "tags"}
    if isinstance(value, list):
        return [_without_label_tags(v) for v in value]
    return value


def test_relabel_queue_refuses_a_tag_it_did_not_create(curated):
    from samseg_core.stages.curation import build_relabel_queue

    dataset = _evaluated(curated)
    dataset.take(1, seed=1).tag_samples("relabel")  # the user's own tag of that name
    before = snapshot(dataset)
    with pytest.raises(ValueError, match="overwrite=True"):
        build_relabel_queue(dataset, eval_key="nd_iou", name="relabel")
    assert snapshot(dataset) == before
