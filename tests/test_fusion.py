"""Calibrated fusion: the per-class choice on constructed cases, no harm on simulated scenes' held-out split, and
calibrate_fusion / apply_fusion through the SDK and their operators on the real temporary database."""

from __future__ import annotations

import numpy as np
import pytest

from samseg_core.fusion import (
    BASELINE,
    FusionTally,
    calibrate,
    class_iou_of,
    fuse,
    fused_confusion,
    fusion_candidates,
    miou_of,
    split_of,
)


def _confusion(gt: np.ndarray, pred: np.ndarray, n: int) -> np.ndarray:
    return np.bincount(gt.ravel() * n + pred.ravel(), minlength=n * n).reshape(n, n)


def _constructed(seed: int) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Class 1 (left square) and class 2 (right square), both eroded in the baseline. Candidate ``good1`` restores
    class 1 exactly; ``good2`` restores class 2 but also paints class 2 over 3 rows of class 1; ``bad`` paints
    class 1 over background."""
    rng = np.random.default_rng(seed)
    gt = np.zeros((40, 80), np.int64)
    o = int(rng.integers(0, 3))
    gt[10 + o : 30 + o, 5:25] = 1
    gt[10:30, 45:65] = 2
    baseline = gt.copy()
    baseline[10 + o : 14 + o, 5:25] = 0
    baseline[10:14, 45:65] = 0
    good1 = baseline.copy()
    good1[gt == 1] = 1
    good2 = baseline.copy()
    good2[gt == 2] = 2
    good2[14 + o : 17 + o, 5:25] = 2
    bad = baseline.copy()
    bad[32:38, 0:40] = 1
    return gt, baseline, {"good1": good1, "good2": good2, "bad": bad}


def _tallies(n: int = 6, holdout_every: int = 3):
    names = ["good1", "good2", "bad"]
    cal, held = FusionTally(names), FusionTally(names)
    cases = []
    for i in range(n):
        gt, baseline, maps = _constructed(i)
        (held if i % holdout_every == 0 else cal).add(gt, baseline, [maps[k] for k in names])
        cases.append((gt, baseline, maps))
    return cal, held, cases


def test_calibration_picks_the_better_candidate_per_class_and_keeps_the_baseline_elsewhere():
    cal, held, _ = _tallies()
    result = calibrate(cal, held, min_support=10, class_names={0: "bg", 1: "one", 2: "two"})
    assert result.choice == {1: "good1"}  # good2 gains class 2 but loses more of class 1: a net loss
    rows = {row["class"]: row for row in result.table}
    assert rows["one"]["method"] == "good1" and rows["one"]["gain"] > 0 and rows["one"]["held_out_gain"] > 0
    assert rows["two"]["method"] == BASELINE and rows["two"]["reason"] == "no gain on calibration"
    assert rows["two"]["class_iou_gain"] > 0  # class 2's own IoU rose: the net gain is what decides
    assert result.scores["held_out"]["fused_miou"] > result.scores["held_out"]["baseline_miou"]


def test_classes_with_too_little_support_keep_the_baseline():
    cal, held, _ = _tallies()
    result = calibrate(cal, held, min_support=10_000)
    assert result.choice == {}
    assert all(row["method"] == BASELINE for row in result.table)
    assert [row["reason"] for row in result.table if row["gain"] > 0] == [
        "too little support (320 px < 10000)"
    ]
    assert result.scores["held_out"]["fused_miou"] == result.scores["held_out"]["baseline_miou"]


def test_a_class_that_loses_on_the_held_out_split_falls_back():
    names = ["flaky"]
    cal, held = FusionTally(names), FusionTally(names)
    gt, baseline, maps = _constructed(0)
    cal.add(gt, baseline, [maps["good1"]])
    wrong = baseline.copy()
    wrong[0:6, 0:40] = 1  # on the held-out image the same candidate paints class 1 over background
    held.add(gt, baseline, [wrong])
    result = calibrate(cal, held, min_support=1)
    assert result.choice == {}
    assert {row["reason"] for row in result.table} == {"lost on held-out"}


def test_fused_confusion_from_the_tally_equals_the_confusion_of_the_fused_maps():
    cal, held, cases = _tallies()
    result = calibrate(cal, held, min_support=1)
    choice = {c: cal.candidates.index(k) for c, k in result.choice.items()}
    expected = sum(_confusion(gt, fuse(baseline, maps, result), 3) for gt, baseline, maps in cases[1:3])
    check = FusionTally(cal.candidates)
    for gt, baseline, maps in cases[1:3]:
        check.add(gt, baseline, [maps[k] for k in cal.candidates])
    assert np.array_equal(fused_confusion(check, np.arange(3), choice, result.priority), expected)


def test_fuse_changes_only_into_the_chosen_classes():
    gt, baseline, maps = _constructed(0)
    cal, held, _ = _tallies()
    result = calibrate(cal, held, min_support=1)
    fused = fuse(baseline, maps, result)
    changed = fused != baseline
    assert changed.any() and set(np.unique(fused[changed])) <= set(result.choice)


def test_miou_of_matches_a_direct_computation_and_splits_are_stable():
    gt = np.array([[0, 0, 1, 1], [2, 2, 1, 1]])
    pred = np.array([[0, 1, 1, 1], [2, 0, 1, 1]])
    conf = _confusion(gt, pred, 3)
    assert np.allclose(class_iou_of(conf), [1 / 3, 4 / 5, 1 / 2])
    assert miou_of(conf) == pytest.approx((1 / 3 + 4 / 5 + 1 / 2) / 3)
    ids = [f"id{i}" for i in range(400)]
    share = np.mean([split_of(i, 0.3) == "held_out" for i in ids])
    assert 0.22 < share < 0.38 and [split_of(i, 0.3) for i in ids] == [split_of(i, 0.3) for i in ids]


@pytest.mark.parametrize("errors", ["moderate", "harsh"])
def test_fusion_never_scores_below_the_baseline_on_simulated_held_out_scenes(errors):
    from samseg_core.fusion_methods import candidate_maps
    from samseg_core.sam_embedding import EmbeddingCache
    from samseg_core.testing.sam_simulator import (
        ERROR_PRESETS,
        SimulatedMaskSource,
        SimulatedSam,
        make_study_scenes,
        study_baseline,
    )

    scenes = make_study_scenes(12, seed=3)
    sim = SimulatedSam(scenes, ERROR_PRESETS[errors], seed=3)
    cache, source = EmbeddingCache(sim, max_items=len(scenes)), SimulatedMaskSource(sim)
    candidates = fusion_candidates()
    names = [c.name for c in candidates]
    gains = []
    for degradation in ({"wobble_px": 0.4}, {"blur_radius": 4}, {"erosion_px": 2}, {"missed": 3}):
        tallies = {"calibration": FusionTally(names), "held_out": FusionTally(names)}
        held = []
        for i, scene in enumerate(scenes):
            baseline = study_baseline(scene, 100 + i, **degradation)
            image = cache.prompt_image(str(i), scene.image)
            maps = candidate_maps(candidates, baseline, image=image, proposals=source.proposals_for(i))
            split = split_of(f"scene{i}", 0.35)
            tallies[split].add(scene.semantic, baseline, [maps[n] for n in names])
            if split == "held_out":
                held.append((scene.semantic, baseline, maps))
        result = calibrate(tallies["calibration"], tallies["held_out"], min_support=100)
        n = 6
        base = sum(_confusion(gt, b, n) for gt, b, _ in held)
        fused = sum(_confusion(gt, fuse(b, maps, result), n) for gt, b, maps in held)
        assert miou_of(fused) >= miou_of(base) - 1e-12, (errors, degradation, result.table)
        gains.append(miou_of(fused) - miou_of(base))
    assert max(gains) > 0.01  # it does help somewhere (blurred or eroded boundaries)


@pytest.fixture
def study_dataset(dataset, tmp_path):
    """12 study scenes with ground truth and an eroded baseline, and the SAM simulator that knows them."""
    import fiftyone as fo

    from samseg_core.mask_targets import merge_mask_targets
    from samseg_core.testing import write_scene_images
    from samseg_core.testing.sam_simulator import (
        ERROR_PRESETS,
        SimulatedSam,
        make_study_scenes,
        study_baseline,
    )

    scenes = make_study_scenes(12, seed=5)
    paths = write_scene_images(scenes, tmp_path / "images")
    dataset.add_samples(
        fo.Sample(
            filepath=str(path),
            ground_truth=fo.Segmentation(mask=scene.semantic.astype(np.uint8)),
            baseline=fo.Segmentation(mask=study_baseline(scene, i, erosion_px=2).astype(np.uint8)),
        )
        for i, (scene, path) in enumerate(zip(scenes, paths))
    )
    merge_mask_targets(dataset, "ground_truth", scenes[0].class_names)
    merge_mask_targets(dataset, "baseline", scenes[0].class_names)
    return dataset, SimulatedSam(scenes, ERROR_PRESETS["moderate"], seed=5)


def _held_out_miou(dataset, key: str, field: str) -> float:
    n = 6
    held = dataset.match({f"{key}_split": "held_out"})
    total = sum(
        _confusion(s.ground_truth.mask.astype(np.int64), s[field].mask.astype(np.int64), n) for s in held
    )
    return miou_of(total)


def test_calibrate_and_apply_fusion_on_a_dataset_with_the_simulator(study_dataset):
    from samseg_core import apply_fusion, calibrate_fusion, load_fusion_calibration
    from samseg_core.sam_embedding import EmbeddingCache
    from samseg_core.stages.qa_summary import qa_summary, summary_markdown
    from samseg_core.testing.sam_simulator import SimulatedMaskSource

    dataset, sim = study_dataset
    cache = EmbeddingCache(sim, max_items=len(dataset))
    summary = calibrate_fusion(
        dataset, eval_key="fusion", cache=cache, mask_source=SimulatedMaskSource(sim), min_support=50
    )
    assert summary.processed == len(dataset) and summary.failed == 0
    assert set(dataset.distinct("fusion_split")) == {"calibration", "held_out"}
    calibration = load_fusion_calibration(dataset, "fusion")
    assert calibration.choice and summary.extra["scores"] == calibration.scores
    assert dataset.get_run_info("fusion").config.kind == "fusion"

    unlabelled = dataset.clone()  # the fusion applies to any view: here one without ground truth
    unlabelled.delete_sample_field("ground_truth")
    apply_fusion(
        unlabelled.view(),
        calibration="fusion",
        label_field="fused",
        cache=cache,
        mask_source=SimulatedMaskSource(sim),
    )
    apply_fusion(
        dataset, calibration="fusion", label_field="fused", cache=cache, mask_source=SimulatedMaskSource(sim)
    )
    assert unlabelled.count("fused") == len(unlabelled)
    fused = [s.fused.mask for s in dataset.sort_by("filepath")]
    assert all(np.array_equal(a, s.fused.mask) for a, s in zip(fused, unlabelled.sort_by("filepath")))
    assert _held_out_miou(dataset, "fusion", "fused") > _held_out_miou(dataset, "fusion", "baseline")
    assert dataset.mask_targets["fused"] == dataset.mask_targets["baseline"]

    text = summary_markdown(qa_summary(dataset))
    assert "Calibrated fusion 'fusion'" in text
    for row in calibration.table:
        assert f"| {row['class']} | {row['method']} |" in text


def test_the_operators_calibrate_and_apply_weight_free(study_dataset):
    import fiftyone.operators as foo

    dataset, _ = study_dataset
    calibrate = foo.get_operator("@samseg/samseg/calibrate_fusion")
    result = calibrate(dataset, eval_key="opfusion", methods=("vote",), masks="slic", min_support=20)
    assert result["processed"] == len(dataset) and result["eval_key"] == "opfusion"
    apply = foo.get_operator("@samseg/samseg/apply_fusion")
    result = apply(dataset, calibration="opfusion", label_field="opfused", masks="slic")
    assert result["processed"] == len(dataset) and dataset.count("opfused") == len(dataset)
    assert _held_out_miou(dataset, "opfusion", "opfused") >= _held_out_miou(dataset, "opfusion", "baseline")


def test_apply_fusion_refuses_an_existing_field_and_a_missing_calibration(study_dataset):
    from samseg_core import apply_fusion
    from samseg_core.errors import StageParameterError

    dataset, _ = study_dataset
    with pytest.raises(StageParameterError, match="calibration"):
        apply_fusion(dataset, calibration="nope", label_field="fused", masks="slic")
    assert "fused" not in dataset.get_field_schema()


def _calibration_form(dataset):
    import fiftyone.operators as foo
    from fiftyone.operators.executor import ExecutionContext

    ctx = ExecutionContext(request_params={"dataset_name": dataset.name, "params": {}})
    return foo.get_operator("@samseg/samseg/calibrate_fusion").resolve_input(ctx).type.properties


def test_the_calibration_form_starts_with_what_works_on_this_machine(study_dataset, tmp_path, monkeypatch):
    dataset, _ = study_dataset
    form = _calibration_form(dataset)
    assert list(form["methods"].default) == ["vote"] and form["masks"].default == "superpixels"
    assert "No SAM checkpoint on this machine" in form["methods_note"].view.label

    checkpoint = tmp_path / "sam_vit_b_01ec64.pth"
    checkpoint.write_bytes(b"found, not read")
    monkeypatch.setenv("SAMSEG_SAM_CHECKPOINT", str(checkpoint))
    form = _calibration_form(dataset)
    assert list(form["methods"].default) == ["refine", "vote"] and "methods_note" not in form


def test_a_stray_large_id_is_tallied_exactly_without_a_huge_histogram():
    gt = np.array([[1, 1, 65535], [2, 2, 2]])
    baseline = np.array([[1, 0, 65535], [2, 2, 1]])
    tally = FusionTally(["k"])
    tally.add(gt, baseline, [gt], ignore_index=None)
    assert tally.confusion == {(1, 1): 1, (1, 0): 1, (65535, 65535): 1, (2, 2): 2, (2, 1): 1}
    assert sum(tally.changes.values()) == 2
    result = calibrate(tally, FusionTally(["k"]), min_support=1)  # class ids 0, 1, 2 and 65535: four indices
    assert set(result.choice) <= {0, 1, 2, 65535} and result.scores["calibration"]["fused_miou"] == 1.0


def test_the_panel_says_when_a_calibration_had_no_held_out_samples():
    from samseg_core.stages.qa_summary import calibration_markdown

    entry = {"key": "f", "baseline_field": "b", "gt_field": "g", "table": [],
             "scores": {"held_out": {"images": 0, "baseline_miou": float("nan"), "fused_miou": float("nan")}}}  # fmt: skip
    text = "\n".join(calibration_markdown(entry))
    assert "no held-out samples" in text and "nan" not in text
