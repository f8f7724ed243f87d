"""The demo's two paths: weight-free on synthetic scenes, and the real-model path's code (tiny models here)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import fiftyone as fo
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]  # never import conftest: it would run a second time


@pytest.fixture(scope="module")
def demo():
    spec = importlib.util.spec_from_file_location("samseg_demo", REPO_ROOT / "scripts" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def demo_name():
    name = "samseg-demo-test"
    yield name
    if fo.dataset_exists(name):
        fo.delete_dataset(name)


def test_offline_demo_runs_every_weight_free_stage_and_prints_a_summary(
    demo, demo_name, tmp_path, monkeypatch, capsys
):
    argv = ["demo.py", "--offline", "--dataset", demo_name, "--images", "2", "--image-dir", str(tmp_path)]
    argv += ["--database-uri", fo.config.database_uri]  # this session's private database
    monkeypatch.setattr(sys, "argv", argv)

    demo.main()

    out = capsys.readouterr().out
    dataset = fo.load_dataset(demo_name)
    assert "weight-free stages" in out and f"bash scripts/demo.sh --app --dataset {demo_name}" in out
    assert dataset.count("ssa") == dataset.count("ssa_noharm") == dataset.count("fused") == 2
    assert {"coarse_iou", "ssa_iou", "ssa_noharm_iou", "fusion", "fused_iou"} <= set(dataset.list_runs())
    assert "per class:" in out
    assert "relabel" in dataset.list_saved_views()
    for key in ("coarse_iou", "ssa_iou"):
        assert f"{key:<16} {dataset.mean(f'{key}_miou'):.4f}" in out


def test_demo_refuses_to_replace_a_dataset_it_did_not_make(demo, demo_name):
    fo.Dataset(demo_name, persistent=True)

    with pytest.raises(SystemExit, match="not made by this demo"):
        demo.fresh_dataset(demo_name)
    assert fo.dataset_exists(demo_name)


def test_real_model_path_runs_baseline_refinement_voting_and_scores(demo, demo_name, tmp_path):
    # tiny random models only prove the code path; the real demo loads SegFormer-B0 and SAM vit_b
    from samseg_core.models.semantic import load_semantic_model
    from samseg_core.testing import tiny_sam, tiny_segformer
    from samseg_core.testing.scenes import class_names_for

    dataset = demo.fresh_dataset(demo_name)
    demo.synthetic_samples(dataset, tmp_path, 2)
    segformer = load_semantic_model(tiny_segformer(class_names_for(6)), device="cpu")

    steps = demo.run_with_weights(
        dataset, segformer, tiny_sam(), has_gt=True, points_per_side=4, pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
    )  # fmt: skip

    assert [name for name, _ in steps][:3] == [
        "baseline (SegFormer-B0, ADE20K)",
        "SAM refinement (points+box, gated)",
        "semantic voting (SAM automatic masks, fast preset)",
    ]
    assert all(getattr(result, "failed", 0) == 0 for _, result in steps)
    assert dataset.count("baseline") == dataset.count("sam_refined") == dataset.count("ssa") == 2
    assert {"sam_refined_iou", "ssa_iou"} <= set(dataset.list_runs())


def test_weights_path_accepts_a_sam2_checkpoint_directory(demo, demo_name, tmp_path, monkeypatch):
    # a SAM 2.1 checkpoint in the hub's save_pretrained form (tiny random weights here), found as a user's would be
    from samseg_core.models.promptable import TransformersSamBackend
    from samseg_core.models.semantic import load_semantic_model
    from samseg_core.testing import tiny_segformer
    from samseg_core.testing.scenes import class_names_for
    from samseg_core.testing.tiny_sam_family import save_tiny_transformers_sam

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    directory = save_tiny_transformers_sam(tmp_path / "sam2.1-tiny", kind="sam2")
    sam, _, found = demo.find_weights(False, str(directory))
    assert isinstance(sam, TransformersSamBackend) and sam.kind == "sam2"
    assert "transformers sam2" in found
    missing, _, found = demo.find_weights(False, "facebook/sam2.1-hiera-large")
    assert missing is None and "not found" in found

    dataset = demo.fresh_dataset(demo_name)
    demo.synthetic_samples(dataset, tmp_path / "images", 2)
    segformer = load_semantic_model(tiny_segformer(class_names_for(6)), device="cpu")
    steps = demo.run_with_weights(
        dataset,
        segformer,
        sam,
        has_gt=True,
        points_per_side=4,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
    )
    assert all(getattr(result, "failed", 0) == 0 for _, result in steps)
    assert dataset.count("sam_refined") == dataset.count("ssa") == 2


def test_app_option_needs_the_demo_dataset_in_the_demos_database(demo, monkeypatch):
    argv = ["demo.py", "--app", "--dataset", "no-such-demo", "--database-uri", fo.config.database_uri]
    monkeypatch.setattr(sys, "argv", argv)

    with pytest.raises(SystemExit, match="no dataset 'no-such-demo' in the demo's database"):
        demo.main()
