"""How the operators execute from a stock App: running now is always offered, background runs only where an
orchestrator can take them, and the form says which and how to enable background runs.

Before: views over 25 samples forced delegation, so a stock App (no orchestrator) hid Execute and nothing ran.
"""

from __future__ import annotations

import fiftyone as fo
import fiftyone.operators as foo
import pytest
from fiftyone.operators.executor import ExecutionContext

from samseg_core.testing import make_scenes

EVALUATE = "@samseg/samseg/evaluate_iou"


@pytest.fixture
def thirty(dataset, tmp_path):
    """30 samples with a ground truth and a prediction (one synthetic scene, repeated)."""
    from samseg_core.mask_targets import merge_mask_targets
    from samseg_core.testing import degrade_prediction, write_scene_images

    scene = make_scenes(1, seed=0)[0]
    (path,) = write_scene_images([scene], tmp_path / "images")
    dataset.add_samples(
        fo.Sample(
            filepath=str(path),
            ground_truth=fo.Segmentation(mask=scene.semantic.astype("uint8")),
            coarse=fo.Segmentation(mask=degrade_prediction(scene, seed=i).astype("uint8")),
        )
        for i in range(30)
    )
    merge_mask_targets(dataset, "ground_truth", scene.class_names)
    return dataset


def _context(samples, params=None) -> ExecutionContext:
    request = {"dataset_name": samples._dataset.name, "params": params or {}}
    if samples.view() != samples._dataset.view():
        request["view"] = samples._serialize()
    return ExecutionContext(request_params=request)


def _options(samples, params=None):
    return foo.get_operator(EVALUATE).resolve_execution_options(_context(samples, params))


def test_a_stock_app_can_run_a_large_view_now_and_the_form_says_how_to_run_it_in_the_background(
    thirty, monkeypatch
):
    monkeypatch.setattr(fo.config, "allow_legacy_orchestrators", False)

    options = _options(thirty)
    form = foo.get_operator(EVALUATE).resolve_input(_context(thirty)).type.properties

    assert options.allow_immediate_execution and not options.allow_delegated_execution
    note = form["execution_note"].view.label
    assert "30 samples" in note and "FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS=true" in note
    assert "fiftyone delegated launch" in note


def test_with_background_runs_enabled_large_views_default_to_them_and_small_ones_run_now(thirty, monkeypatch):
    monkeypatch.setattr(fo.config, "allow_legacy_orchestrators", True)

    large, small = _options(thirty), _options(thirty.limit(10))
    form = foo.get_operator(EVALUATE).resolve_input(_context(thirty)).type.properties

    assert large.allow_immediate_execution and large.allow_delegated_execution
    assert large.default_choice_to_delegated and not small.default_choice_to_delegated
    assert "Schedule" in form["execution_note"].view.label


def test_small_views_on_a_stock_app_get_no_note(thirty, monkeypatch):
    monkeypatch.setattr(fo.config, "allow_legacy_orchestrators", False)

    form = foo.get_operator(EVALUATE).resolve_input(_context(thirty.limit(10))).type.properties

    assert "execution_note" not in form


def test_call_with_delegate_still_decides(thirty):
    now = _options(thirty, {"delegate": False})
    queued = _options(thirty, {"delegate": True})

    assert now.allow_immediate_execution and not now.allow_delegated_execution
    assert queued.allow_delegated_execution and not queued.allow_immediate_execution


def test_a_thirty_sample_view_executes_immediately_through_the_operator(thirty, monkeypatch):
    monkeypatch.setattr(fo.config, "allow_legacy_orchestrators", False)
    params = {"pred_field": "coarse", "gt_field": "ground_truth", "eval_key": "coarse_iou"}

    result = foo.execute_operator(EVALUATE, {"view": thirty.view(), "params": params})

    assert result.error is None and result.result["processed"] == 30
    assert thirty.count("coarse_iou_miou") == 30
