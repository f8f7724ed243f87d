"""The QA panel's "Background runs" table, read from FiftyOne's delegated operations (no browser).

A run is queued as the App queues it (``execute_operator`` with ``request_delegation``), taken by a worker as
``fiftyone delegated launch`` takes it (``DelegatedOperationService.execute_operation``, in process), and the
rows say what a user needs: which run, its state, progress while running, counts when done, the error when not.
The browser test (``tests/test_app_browser.py``) follows one run through a real worker process.
"""

from __future__ import annotations

import fiftyone as fo
import fiftyone.operators as foo
import pytest
from fiftyone.operators.delegated import DelegatedOperationService
from fiftyone.operators.executor import ExecutionProgress, ExecutionResult, ExecutionRunState

from operators.background_runs import (
    AUTO_REFRESH_MS,
    finished_since,
    list_background_runs,
    pending_line,
    waiting_for_a_worker,
)

EVALUATE = "@samseg/samseg/evaluate_iou"


@pytest.fixture
def queueable(scene_dataset, monkeypatch):
    """The shared synthetic scenes, on a FiftyOne that can queue delegated runs; their runs deleted afterwards."""
    monkeypatch.setattr(fo.config, "allow_legacy_orchestrators", True)
    yield scene_dataset
    DelegatedOperationService().delete_for_dataset(scene_dataset._doc.id)


def _queue(dataset, eval_key: str) -> None:
    params = {"pred_field": "coarse", "gt_field": "ground_truth", "eval_key": eval_key, "delegate": True}
    result = foo.execute_operator(EVALUATE, {"dataset": dataset, "params": params}, request_delegation=True)
    assert result.delegated and result.error is None


def test_a_queued_run_is_listed_as_waiting_for_a_worker(queueable):
    _queue(queueable, "bg")

    (row,) = list_background_runs(queueable.name)

    assert row["state"] == ExecutionRunState.QUEUED and row["run"] == "samseg: evaluate IoU (→ bg, 4 samples)"
    assert row["details"] == "waiting for a worker (fiftyone delegated launch)" and row["queued"]
    assert waiting_for_a_worker([row]) and pending_line([row]).startswith("**Background runs: 1 queued**")


def test_a_run_a_worker_completed_shows_its_counts_and_counts_as_finished(queueable):
    _queue(queueable, "bg")
    before = list_background_runs(queueable.name)
    service = DelegatedOperationService()
    (operation,) = service.list_operations(dataset_name=queueable.name)

    service.execute_operation(operation)  # what a `fiftyone delegated launch` worker does
    after = list_background_runs(queueable.name)

    assert after[0]["state"] == ExecutionRunState.COMPLETED
    assert after[0]["details"].startswith("processed 4, skipped 0, failed 0")
    assert finished_since(before, after) and not finished_since(after, after)
    assert queueable.count("bg_miou") == 4 and pending_line(after) == ""


def test_running_and_failed_runs_show_progress_and_the_errors_last_line(queueable):
    _queue(queueable, "a")
    _queue(queueable, "b")
    service = DelegatedOperationService()
    running, failing = sorted(service.list_operations(dataset_name=queueable.name), key=lambda op: op.label)

    service.set_running(running.id)
    service.set_progress(running.id, ExecutionProgress(0.4))
    service.set_failed(
        failing.id, result=ExecutionResult(error="Traceback ...\nValueError: pred_field: gone")
    )
    rows = {row["run"]: row for row in list_background_runs(queueable.name)}

    assert (
        rows[running.label]["state"] == ExecutionRunState.RUNNING
        and rows[running.label]["details"] == "40% done"
    )
    assert rows[failing.label]["state"] == ExecutionRunState.FAILED
    assert rows[failing.label]["details"] == "ValueError: pred_field: gone"
    assert not waiting_for_a_worker(list(rows.values())) and pending_line(list(rows.values())).startswith(
        "**Background runs: 1 running**"
    )


def test_runs_on_another_dataset_are_not_listed(queueable):
    other = fo.Dataset()
    try:
        _queue(queueable, "mine")
        assert list_background_runs(other.name) == []
        assert [row["run"] for row in list_background_runs(queueable.name)] == [
            "samseg: evaluate IoU (→ mine, 4 samples)"
        ]
    finally:
        other.delete()


def _panel_properties(runs: list[dict]) -> dict:
    """The QA panel's rendered properties (name -> JSON) for a state listing ``runs``."""
    from types import SimpleNamespace

    state = SimpleNamespace(background_runs=runs, eval_keys=None, eval_key=None, views=None)
    panel = foo.get_operator("@samseg/samseg/samseg_qa_panel")
    return panel.render(SimpleNamespace(panel=SimpleNamespace(state=state))).to_json()["type"]["properties"]


def test_the_panel_refreshes_itself_while_runs_are_unfinished_and_stops_when_they_end():
    row = {"id": "r1", "run": "samseg: evaluate IoU", "queued": "", "details": ""}

    for state in (ExecutionRunState.QUEUED, ExecutionRunState.RUNNING):
        timer = _panel_properties([{**row, "state": state}])["background_poll"]["view"]
        assert timer["name"] == "TimerView" and timer["interval"] == AUTO_REFRESH_MS
        assert timer["on_interval"] == "@samseg/samseg/samseg_qa_panel#refresh"
    for state in (ExecutionRunState.COMPLETED, ExecutionRunState.FAILED):
        assert "background_poll" not in _panel_properties([{**row, "state": state}])
    assert "background_poll" not in _panel_properties([])
