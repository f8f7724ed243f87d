"""Runs whose input a later stage replaced: found from the runs' configs, marked stale, shown as stale.

An IoU run of ``coarse`` says nothing once ``coarse`` has been overwritten. When a stage is about to write a
field that existing samseg runs read (their config names it), it warns and records each of those runs in the
dataset's ``info["samseg_stale_runs"]`` (one key per run, set in the database key by key, so concurrent stages
never lose each other's marks); re-running a run clears its mark. The QA panel and :func:`qa_summary` show the
marks.
"""

from __future__ import annotations

import datetime
import warnings
from collections.abc import Iterable
from typing import Any

INFO_KEY = "samseg_stale_runs"


class StaleRunWarning(UserWarning):
    """A stage overwrote a field that existing runs were computed from."""


def runs_reading(dataset: Any, field: str) -> list[str]:
    """Keys of the samseg runs whose config names ``field`` (as a value, or in a list of fields)."""
    from samseg_core.stages.eval_runs import KINDS, list_samseg_runs

    keys = []
    for key in (k for kind in KINDS for k in list_samseg_runs(dataset, kind)):
        config = dataset.get_run_info(key).config.serialize()
        values = [v for name, v in config.items() if name not in ("method", "cls", "type", "field_suffixes")]
        if any(v == field or (isinstance(v, (list, tuple)) and field in v) for v in values):
            keys.append(key)
    return keys


def mark_stale(dataset: Any, keys: Iterable[str], field: str, stage: str) -> list[str]:
    """Marks runs ``keys`` stale because ``stage`` replaced ``field``; warns once; returns the keys marked."""
    from samseg_core.mask_targets import _collection

    keys = sorted(set(keys))
    if not keys:
        return []
    when = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    mark = {"field": field, "stage": stage, "at": when}
    update = {f"info.{INFO_KEY}.{key}": mark for key in keys}
    _collection(dataset).update_one({"_id": dataset._doc.id}, {"$set": update})
    dataset.reload()
    warnings.warn(
        f"{stage} replaces '{field}', which run(s) {keys} were computed from: they are marked stale; re-run them "
        "to refresh their numbers",
        StaleRunWarning,
        stacklevel=3,
    )
    return keys


def clear_stale(dataset: Any, key: str) -> None:
    """Removes the stale mark of run ``key`` (it was just re-run)."""
    from samseg_core.mask_targets import _collection

    if key in stale_runs(dataset):
        _collection(dataset).update_one({"_id": dataset._doc.id}, {"$unset": {f"info.{INFO_KEY}.{key}": ""}})
        dataset.reload()


def stale_runs(dataset: Any) -> dict[str, dict[str, str]]:
    """``{run key: {"field", "stage", "at"}}`` of the runs marked stale."""
    marks = (dataset.info or {}).get(INFO_KEY) or {}
    return {key: dict(mark) for key, mark in marks.items() if key in dataset.list_runs()}
