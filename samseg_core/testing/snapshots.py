"""Snapshots of everything a user could lose in a dataset, to check that a stage changed nothing it should not.

A snapshot holds every sample field's values and type, mask targets, sample and label tags, saved views, runs
(keys and configs), info, classes, and optionally the files under some directories (path -> bytes digest).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from typing import Any

import numpy as np

# fields FiftyOne itself updates on every write
VOLATILE_FIELDS = {"last_modified_at"}


def comparable(value: Any) -> Any:
    """A value reduced to plain, comparable data (arrays as shape + bytes, nan as a marker)."""
    from samseg_core.labels import read_segmentation

    if value is None:
        return None
    if type(value).__name__ in ("Segmentation", "Heatmap"):
        array = read_segmentation(value) if type(value).__name__ == "Segmentation" else value.get_map()
        return ("array", np.asarray(array).shape, np.asarray(array).tobytes())
    if hasattr(value, "to_dict"):
        return plain(value.to_dict())
    return plain(value)


def plain(value: Any) -> Any:
    """Containers of plain values, without FiftyOne's volatile ``_uuid`` keys; nan compares equal to nan."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items() if k != "_uuid"}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return ("array", value.shape, value.tobytes())
    if isinstance(value, float) and np.isnan(value):
        return "nan"
    return value


def _field_type(field: Any) -> tuple:
    document = getattr(field, "document_type", None)
    subfield = getattr(field, "field", None)
    return (
        type(field).__name__,
        getattr(document, "__name__", None),
        type(subfield).__name__ if subfield else None,
    )


def file_digests(directories: Iterable[str | os.PathLike]) -> dict[str, str]:
    """``{path: sha1}`` of every file under ``directories`` (missing directories are empty)."""
    out = {}
    for directory in directories:
        for root, _, files in os.walk(directory):
            for name in files:
                path = os.path.join(root, name)
                with open(path, "rb") as handle:
                    out[path] = hashlib.sha1(handle.read()).hexdigest()
    return out


def snapshot(dataset: Any, directories: Iterable[str | os.PathLike] = ()) -> dict[str, Any]:
    """Everything a user could lose: field values and types, mask targets, tags, saved views, runs, info,
    classes, and the files under ``directories``."""
    dataset.reload()
    schema = dataset.get_field_schema()
    names = [name for name in schema if name not in VOLATILE_FIELDS]
    return {
        "schema": {name: _field_type(schema[name]) for name in names},
        "fields": {name: [comparable(v) for v in dataset.values(name)] for name in names},
        "mask_targets": {f: dict(t) for f, t in dataset.mask_targets.items()},
        "default_mask_targets": dict(dataset.default_mask_targets),
        "sample_tags": dataset.count_sample_tags(),
        "label_tags": dataset.count_label_tags(),
        "saved_views": {
            n: plain(dataset.load_saved_view(n)._serialize()) for n in dataset.list_saved_views()
        },
        "runs": {key: plain(dataset.get_run_info(key).config.serialize()) for key in dataset.list_runs()},
        "info": plain(dict(dataset.info)),
        "classes": plain(dict(dataset.classes)),
        "files": file_digests(directories),
    }


def changes(before: dict[str, Any], after: dict[str, Any]) -> dict[str, set[str]]:
    """What changed, by kind: existing fields whose values or type changed, mask-target fields whose existing
    entries changed or vanished, and which of tags, saved views, runs, info, classes or files changed."""
    out: dict[str, set[str]] = {"fields": set(), "mask_targets": set(), "other": set()}
    for name, values in before["fields"].items():
        if after["fields"].get(name) != values or after["schema"].get(name) != before["schema"][name]:
            out["fields"].add(name)
    for name, targets in before["mask_targets"].items():
        now = after["mask_targets"].get(name, {})
        if any(now.get(k) != v for k, v in targets.items()):
            out["mask_targets"].add(name)
    for key in ("default_mask_targets", "sample_tags", "label_tags", "saved_views", "info", "classes"):
        if before[key] != after[key]:
            out["other"].add(key)
    if any(after["runs"].get(k) != v for k, v in before["runs"].items()):
        out["other"].add("runs")
    if any(after["files"].get(p) != d for p, d in before["files"].items()):
        out["other"].add("files")
    return out


def new_fields(before: dict[str, Any], after: dict[str, Any]) -> set[str]:
    """The fields that exist after but not before."""
    return set(after["schema"]) - set(before["schema"])
