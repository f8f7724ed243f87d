"""samseg's background runs on a dataset: its operators' delegated operations with their state, for the QA panel.

A run the App schedules (or ``shard_run`` queues) is a FiftyOne delegated operation: queued until a
``fiftyone delegated launch`` worker takes it, then running, then completed or failed. These are read with
``DelegatedOperationService().list_operations``, the same records ``fiftyone delegated list`` shows.
"""

from __future__ import annotations

from typing import Any

from fiftyone.factory import DelegatedOperationPagingParams
from fiftyone.operators.delegated import DelegatedOperationService
from fiftyone.operators.executor import ExecutionRunState

from .sharding import PLUGIN

#: How many of the newest runs the panel lists.
NEWEST_RUNS = 10
#: While runs are queued or running, the panel refreshes itself this often (milliseconds).
AUTO_REFRESH_MS = 5_000
#: What the panel says while runs wait for a worker.
WORKER_HOWTO = (
    "Queued runs start when a worker takes them: run `fiftyone delegated launch` with the App's environment "
    "(the same database, `FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS=true`). `fiftyone delegated list` shows them "
    "too. This table updates itself while runs are queued or running."
)
_WAITING = (ExecutionRunState.QUEUED, ExecutionRunState.SCHEDULED)


def list_background_runs(dataset_name: str, limit: int = NEWEST_RUNS) -> list[dict[str, Any]]:
    """The newest ``limit`` delegated operations of samseg operators on dataset ``dataset_name``, newest first.

    Each row: ``id``, ``run`` (the operation's label), ``state`` (queued / scheduled / running / completed /
    failed), ``queued`` (UTC, ``YYYY-MM-DD HH:MM:SS``) and ``details`` (progress while running, the counts when
    completed, the error when failed).
    """
    operations = DelegatedOperationService().list_operations(
        dataset_name=dataset_name,
        search={f"^{PLUGIN}/": ["operator"]},
        paging=DelegatedOperationPagingParams(limit=limit),
    )
    return [_row(operation) for operation in operations]


def pending_line(rows: list[dict[str, Any]]) -> str:
    """One line on the runs not finished yet (``"Background runs: 2 queued, 1 running ..."``), or ``""``."""
    counts = {}
    for row in rows:
        if row["state"] not in ExecutionRunState.TERMINAL_STATES:
            counts[row["state"]] = counts.get(row["state"], 0) + 1
    if not counts:
        return ""
    listed = ", ".join(f"{count} {state}" for state, count in counts.items())
    every = f"{AUTO_REFRESH_MS / 1000:g} s"
    return f"**Background runs: {listed}**, listed with their state at the end of this panel (updated every {every})."


def finished_since(before: list[dict[str, Any]], now: list[dict[str, Any]]) -> bool:
    """Whether a run listed unfinished in ``before`` has completed in ``now`` (its fields are new)."""
    unfinished = {row["id"] for row in before if row["state"] not in ExecutionRunState.TERMINAL_STATES}
    return any(row["id"] in unfinished and row["state"] == ExecutionRunState.COMPLETED for row in now)


def waiting_for_a_worker(rows: list[dict[str, Any]]) -> bool:
    """Whether any of ``rows`` waits for a worker (queued or scheduled)."""
    return any(row["state"] in _WAITING for row in rows)


def _row(operation: Any) -> dict[str, Any]:
    queued = operation.queued_at or operation.scheduled_at
    return {
        "id": str(operation.id),
        "run": operation.label or operation.operator,
        "state": str(operation.run_state),
        "queued": queued.strftime("%Y-%m-%d %H:%M:%S") if queued else "",
        "details": _details(operation),
    }


def _details(operation: Any) -> str:
    state, result = operation.run_state, operation.result
    if state in _WAITING:
        return "waiting for a worker (fiftyone delegated launch)"
    if state == ExecutionRunState.RUNNING:
        progress = getattr(operation.status, "progress", None)
        return f"{progress:.0%} done" if isinstance(progress, (int, float)) else "running"
    if state == ExecutionRunState.FAILED:
        error = getattr(result, "error", None) or ""
        lines = [line for line in str(error).strip().splitlines() if line.strip()]
        return lines[-1] if lines else "failed"
    summary = getattr(result, "result", None)
    if isinstance(summary, dict) and "processed" in summary:
        counts = ", ".join(f"{key} {summary.get(key, 0)}" for key in ("processed", "skipped", "failed"))
        return counts + (f", {summary['seconds']:.1f} s" if isinstance(summary.get("seconds"), float) else "")
    return ""
