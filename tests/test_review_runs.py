"""Runs as a reviewer meets them: a stage that replaces a field existing runs were computed from warns and marks
those runs stale (the QA summary, the panel's source, shows them as stale until re-run), and every run summary
names the fields it wrote and the usual next step."""

from __future__ import annotations

import fiftyone.operators as foo
import pytest
from fiftyone.operators.executor import ExecutionContext

import samseg_core as ss
from samseg_core.stages.qa_summary import summary_markdown
from samseg_core.stages.stale_runs import StaleRunWarning, stale_runs

VOTE_INTO_COARSE = dict(
    baseline_field="ground_truth", label_field="coarse", masks="superpixels", overwrite=True, device="cpu"
)


@pytest.fixture
def evaluated(scene_dataset):
    ss.evaluate_iou(scene_dataset, pred_field="coarse", gt_field="ground_truth", eval_key="coarse_iou")
    ss.agreement_iou(scene_dataset, baseline_field="ground_truth", pred_field="coarse", eval_key="agree")
    return scene_dataset


def test_overwriting_an_evaluated_field_warns_and_marks_its_runs_stale(evaluated):
    with pytest.warns(StaleRunWarning, match="'coarse'.*coarse_iou"):
        summary = ss.semantic_voting(evaluated, **VOTE_INTO_COARSE)

    marks = stale_runs(evaluated)
    assert sorted(marks) == ["agree", "coarse_iou"]
    assert marks["coarse_iou"]["field"] == "coarse" and marks["coarse_iou"]["stage"] == "semantic_voting"
    assert summary.extra["stale_runs"] == "agree, coarse_iou"
    digest = ss.qa_summary(evaluated)
    assert digest["evaluations"][0]["stale"]["field"] == "coarse"
    assert "**STALE**: `coarse` was replaced by semantic_voting" in summary_markdown(digest)


def test_re_running_a_stale_run_clears_its_mark(evaluated):
    with pytest.warns(StaleRunWarning):
        ss.semantic_voting(evaluated, **VOTE_INTO_COARSE)

    ss.evaluate_iou(
        evaluated, pred_field="coarse", gt_field="ground_truth", eval_key="coarse_iou", overwrite=True
    )

    assert sorted(stale_runs(evaluated)) == ["agree"]
    assert ss.qa_summary(evaluated)["evaluations"][0]["stale"] is None


def test_writing_a_field_no_run_reads_marks_nothing(evaluated, recwarn):
    ss.semantic_voting(
        evaluated, baseline_field="coarse", label_field="fresh", masks="superpixels", device="cpu"
    )

    assert stale_runs(evaluated) == {}
    assert not [w for w in recwarn if issubclass(w.category, StaleRunWarning)]


def test_the_form_warns_before_execute(evaluated):
    params = {k: v for k, v in VOTE_INTO_COARSE.items() if k != "device"}
    ctx = ExecutionContext(request_params={"dataset_name": evaluated.name, "params": params})

    form = foo.get_operator("@samseg/samseg/semantic_voting").resolve_input(ctx).type.properties

    assert "coarse_iou" in form["stale_coarse"].view.label
    assert stale_runs(evaluated) == {}  # the form only warns; nothing is marked before Execute


def test_run_summaries_name_the_fields_written_and_the_next_step(scene_dataset):
    summary = ss.evaluate_iou(scene_dataset, pred_field="coarse", gt_field="ground_truth", eval_key="ev")

    written = summary.extra["fields_written"].split(", ")
    assert written[0] == "ev_miou" and all(name.startswith("ev_") for name in written)
    assert "QA panel" in summary.extra["next_step"] and "relabel queue" in summary.extra["next_step"]
    assert summary.to_dict()["next_step"] == summary.extra["next_step"]  # what the App's results show


def test_per_mask_and_failure_layers_start_unticked_in_the_app(scene_dataset):
    ss.evaluate_iou(scene_dataset, pred_field="coarse", gt_field="ground_truth", eval_key="ev")
    ss.semantic_voting(
        scene_dataset, baseline_field="coarse", label_field="voted", instances_field="voted_masks",
        masks="superpixels", device="cpu",
    )  # fmt: skip
    ss.detect_failures(scene_dataset, pred_field="coarse", gt_field="ground_truth", eval_key="fails")

    active = scene_dataset.app_config.active_fields
    assert active.exclude is True
    assert "voted_masks" in active.paths and "voted" not in active.paths  # the map stays, the masks hide
    assert any(path.startswith("fails") for path in active.paths)


def test_a_users_own_inclusion_list_is_left_as_it_is(scene_dataset):
    from fiftyone.core.odm.dataset import ActiveFields

    scene_dataset.app_config.active_fields = ActiveFields(exclude=False, paths=["ground_truth"])
    scene_dataset.save()

    ss.semantic_voting(
        scene_dataset, baseline_field="coarse", label_field="voted", instances_field="voted_masks",
        masks="superpixels", device="cpu",
    )  # fmt: skip

    scene_dataset.reload()
    active = scene_dataset.app_config.active_fields
    assert (active.exclude, active.paths) == (False, ["ground_truth"])
