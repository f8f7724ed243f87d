"""The QA panel's "Background runs" table, read from FiftyOne's delegated operations (no browser).

A run is queued as the App queues it (``execute_operator`` with ``request_delegation``), taken by a worker as
``fiftyone delegated launch`` takes it (``DelegatedOperationService.execute_operation``, in process), and the
rows say what a user needs: which run, its state, progress while running, counts when done, the error when not.
The browser test (``tests/test_app_browser.py``) follows one run through a real worker process.
"""

from __future__ import annotations

import fiftyone as fo
import fiftyone.operators as foo
import numpy as np
import pytest
from fiftyone.operators.delegated import DelegatedOperationService
from fiftyone.operators.executor import ExecutionProgress, ExecutionResult, ExecutionRunState

from operators.background_runs import finished_since, list_background_runs, pending_line, waiting_for_a_worker

EVALUATE = "@samseg/samseg/evaluate_iou"


@pytest.fixture
def three(dataset, tmp_path, monkeypatch):
    monkeypatch.setattr(fo.config, "allow_legacy_orchestrators", True)
    gt = np.zeros((16, 16), np.uint8)
    gt[4:12, 4:12] = 1
    dataset.add_samples(
        fo.Sample(
            filepath=str(tmp_path / f"{i}.png"), gt=fo.Segmentation(mask=gt), pred=fo.Segmentation(mask=gt)
        )
        for i in range(3)
    )
    dataset.mask_targets = {"gt": {0: "background", 1: "cat"}}
    dataset.save()
    yield dataset
    DelegatedOperationService().delete_for_dataset(dataset._doc.id)


def _queue(dataset, eval_key: str) -> None:
    params = {"pred_field": "pred", "gt_field": "gt", "eval_key": eval_key, "delegate": True}
    result = foo.execute_operator(EVALUATE, {"dataset": dataset, "params": params}, request_delegation=True)
    assert result.delegated and result.error is None


def test_a_queued_run_is_listed_as_waiting_for_a_worker(three):
    _queue(three, "bg")

    (row,) = list_background_runs(three.name)

    assert row["state"] == ExecutionRunState.QUEUED and row["run"] == "samseg: evaluate IoU (→ bg, 3 samples)"
    assert row["details"] == "waiting for a worker (fiftyone delegated launch)" and row["queued"]
    assert waiting_for_a_worker([row]) and pending_line([row]).startswith("**Background runs: 1 queued**")


def test_a_run_a_worker_completed_shows_its_counts_and_counts_as_finished(three):
    _queue(three, "bg")
    before = list_background_runs(three.name)
    service = DelegatedOperationService()
    (operation,) = service.list_operations(dataset_name=three.name)

    service.execute_operation(operation)  # what a `fiftyone delegated launch` worker does
    after = list_background_runs(three.name)

    assert after[0]["state"] == ExecutionRunState.COMPLETED
    assert after[0]["details"].startswith("processed 3, skipped 0, failed 0")
    assert finished_since(before, after) and not finished_since(after, after)
    assert three.count("bg_miou") == 3 and pending_line(after) == ""


def test_running_and_failed_runs_show_progress_and_the_errors_last_line(three):
    _queue(three, "a")
    _queue(three, "b")
    service = DelegatedOperationService()
    running, failing = sorted(service.list_operations(dataset_name=three.name), key=lambda op: op.label)

    service.set_running(running.id)
    service.set_progress(running.id, ExecutionProgress(0.4))
    service.set_failed(
        failing.id, result=ExecutionResult(error="Traceback ...\nValueError: pred_field: gone")
    )
    rows = {row["run"]: row for row in list_background_runs(three.name)}

    assert (
        rows[running.label]["state"] == ExecutionRunState.RUNNING
        and rows[running.label]["details"] == "40% done"
    )
    assert rows[failing.label]["state"] == ExecutionRunState.FAILED
    assert rows[failing.label]["details"] == "ValueError: pred_field: gone"
    assert not waiting_for_a_worker(list(rows.values())) and pending_line(list(rows.values())).startswith(
        "**Background runs: 1 running**"
    )


def test_runs_on_another_dataset_are_not_listed(three):
    other = fo.Dataset()
    try:
        _queue(three, "mine")
        assert list_background_runs(other.name) == []
        assert [row["run"] for row in list_background_runs(three.name)] == [
            "samseg: evaluate IoU (→ mine, 3 samples)"
        ]
    finally:
        other.delete()
