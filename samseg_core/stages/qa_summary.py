"""The QA panel's data: samseg's evaluation, agreement and failure runs and relabel queues of a dataset.

Plain functions over a sample collection (no App involved), so the panel stays a thin renderer and tests call
them directly.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from samseg_core.stages.curation import queue_records
from samseg_core.stages.eval_runs import (
    AGREEMENT,
    FAILURES,
    FUSION,
    IOU,
    list_samseg_runs,
    load_samseg_results,
)
from samseg_core.stages.stale_runs import stale_runs


def _summed(result: dict[str, Any]) -> dict[str, Any]:
    return result.get("summed") or {}


def _runs(dataset: Any, kind: str) -> Iterator[tuple[str, Any, dict[str, Any], dict[str, str] | None]]:
    """Each samseg run of ``kind``: its key, run info, stored results and stale mark (None while fresh)."""
    stale = stale_runs(dataset)
    for key in list_samseg_runs(dataset, kind):
        yield key, dataset.get_run_info(key), load_samseg_results(dataset, key), stale.get(key)


def _evaluations(dataset: Any) -> list[dict[str, Any]]:
    out = []
    for key, info, results, stale in _runs(dataset, IOU):
        fields = []
        for field, res in (results.get("fields") or {}).items():
            summed = _summed(res)
            fields.append(
                {
                    "field": field,
                    "miou": summed.get("miou"),
                    "miou_mean_of_images": res.get("mean_of_images"),
                    "pixel_accuracy": summed.get("pixel_accuracy"),
                    "boundary_iou": res.get("boundary_iou_mean"),
                    "delta": res.get("delta_summed"),
                    "num_images": res.get("num_images", 0),
                }
            )
        out.append(
            {
                "key": key,
                "gt_field": getattr(info.config, "gt_field", None),
                "reference": getattr(info.config, "pred_field", None),
                "timestamp": info.timestamp.isoformat() if info.timestamp else None,
                "fields": fields,
                "failed": (results.get("summary") or {}).get("failed", 0),
                "stale": stale,
            }
        )
    return out


def _agreements(dataset: Any) -> list[dict[str, Any]]:
    out = []
    for key, info, results, stale in _runs(dataset, AGREEMENT):
        agreement = results.get("agreement") or {}
        out.append(
            {
                "key": key,
                "field_a": getattr(info.config, "field_a", None),
                "field_b": getattr(info.config, "field_b", None),
                "miou": _summed(agreement).get("miou"),
                "miou_mean_of_images": agreement.get("mean_of_images"),
                "stale": stale,
            }
        )
    return out


def _calibrations(dataset: Any) -> list[dict[str, Any]]:
    """Per calibrate_fusion run: its fields, per-split scores and per-class table (which classes gain from SAM)."""
    out = []
    for key, info, results, stale in _runs(dataset, FUSION):
        calibration = results.get("calibration") or {}
        out.append(
            {
                "key": key,
                "gt_field": getattr(info.config, "gt_field", None),
                "baseline_field": getattr(info.config, "baseline_field", None),
                "scores": calibration.get("scores", {}),
                "table": calibration.get("table", []),
                "stale": stale,
            }
        )
    return out


def _failures(dataset: Any) -> list[dict[str, Any]]:
    out = []
    for key, info, results, stale in _runs(dataset, FAILURES):
        counts = results.get("counts") or {}
        out.append(
            {
                "key": key,
                "pred_field": getattr(info.config, "pred_field", None),
                "counts": dict(counts),
                "stale": stale,
            }
        )
    return out


def per_class_iou_table(evaluation_key: str | None, samples: Any) -> dict[str, Any]:
    """Per-class IoU (summed reduction) of every field of an IoU run: ``{"classes": [...], "series":
    {field: [IoU or None per class]}}``; classes absent everywhere are left out."""
    if not evaluation_key:
        return {"classes": [], "series": {}}
    fields = load_samseg_results(samples._dataset, evaluation_key).get("fields") or {}
    per_field = {f: _summed(res).get("per_class_iou") or {} for f, res in fields.items()}
    classes: list[str] = []
    for values in per_field.values():
        classes.extend(c for c, v in values.items() if v is not None and c not in classes)
    return {
        "classes": classes,
        "series": {f: [values.get(c) for c in classes] for f, values in per_field.items()},
    }


def worst_samples(samples: Any, evaluation_key: str | None, limit: int = 10) -> list[dict[str, Any]]:
    """The ``limit`` samples with the lowest ``<evaluation_key>_miou``: id, file name and mIoU."""
    if not evaluation_key:
        return []
    field = f"{evaluation_key}_miou"
    if samples.get_field(field) is None:
        return []
    view = samples.exists(field).sort_by(field).limit(limit)
    ids, paths, mious = view.values(["id", "filepath", field])
    return [
        {"id": sid, "filename": str(path).rsplit("/", 1)[-1], "miou": miou}
        for sid, path, miou in zip(ids, paths, mious)
    ]


def qa_summary(samples: Any, *, eval_key: str | None = None, worst: int = 10) -> dict[str, Any]:
    """Everything the QA panel shows, as plain JSON-serialisable data.

    Args:
        samples: a dataset or view (worst samples are taken from it; runs and queues are the dataset's).
        eval_key: the IoU run whose per-class IoU and worst samples are shown (default: the latest).
        worst: number of worst samples.

    Returns:
        ``{"evaluations": [...], "selected": key, "per_class": {...}, "worst": [...], "agreements": [...],
        "failures": [...], "calibrations": [...], "queues": [...]}``.
    """
    dataset = samples._dataset
    evaluations = _evaluations(dataset)
    keys = [e["key"] for e in evaluations]
    if eval_key is not None and eval_key not in keys:
        raise ValueError(f"'{eval_key}' is not a samseg IoU run; known: {keys}")
    if eval_key is None and evaluations:
        eval_key = max(evaluations, key=lambda e: e["timestamp"] or "")["key"]
    queues = [
        {
            "name": name,
            "views": rec.get("views", []),
            "samples": rec.get("samples", 0),
            "updated": rec.get("updated"),
        }
        for name, rec in sorted(queue_records(dataset).items())
    ]
    return {
        "evaluations": evaluations,
        "selected": eval_key,
        "per_class": per_class_iou_table(eval_key, samples),
        "worst": worst_samples(samples, eval_key, worst),
        "agreements": _agreements(dataset),
        "failures": _failures(dataset),
        "calibrations": _calibrations(dataset),
        "queues": queues,
    }


def per_class_bar_traces(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Plotly bar traces of the per-class IoU, one per evaluated field (grouped bars: before vs after)."""
    table = summary.get("per_class") or {}
    return [
        {"type": "bar", "name": field, "x": table.get("classes", []), "y": values}
        for field, values in (table.get("series") or {}).items()
    ]


def queue_buttons(samples: Any, summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One ``{"view", "count", "label"}`` per relabel-queue saved view that holds samples (empty ones left out),
    the label showing the count, e.g. ``Open 'relabel' (12)``."""
    dataset = samples._dataset
    saved = set(dataset.list_saved_views())
    buttons = []
    for queue in summary.get("queues", []):
        for name in queue["views"]:
            count = len(dataset.load_saved_view(name)) if name in saved else 0
            if count:
                buttons.append({"view": name, "count": count, "label": f"Open '{name}' ({count})"})
    return buttons


def stale_note(entry: dict[str, Any]) -> str:
    """`` — STALE: ...`` for a run whose input was replaced after it ran (empty otherwise)."""
    mark = entry.get("stale")
    if not mark:
        return ""
    return (
        f" — **STALE**: `{mark['field']}` was replaced by {mark['stage']} at {mark['at']}; re-run to refresh"
    )


def calibration_markdown(calibration: dict[str, Any]) -> list[str]:
    """A calibration's lines: held-out scores, then per class the method chosen and its gains."""

    def fmt(value: Any, sign: str = "") -> str:
        return "–" if value is None or value != value else f"{value:{sign}.4f}"  # None or nan

    held = calibration.get("scores", {}).get("held_out", {})
    checked = (
        f"held-out mIoU {fmt(held.get('baseline_miou'))} → {fmt(held.get('fused_miou'))} on {held['images']} images"
        if held.get("images")
        else "**no held-out samples** (too few labelled samples): the choice is unchecked"
    )
    lines = [
        f"**Calibrated fusion '{calibration['key']}'** (`{calibration['baseline_field']}` vs "
        f"`{calibration['gt_field']}`): {checked}{stale_note(calibration)}",
        "",
        "| class | method | Δ mIoU (calibration) | Δ mIoU (held-out) | Δ class IoU | support (px) | why baseline |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in calibration.get("table", []):
        lines.append(
            f"| {row['class']} | {row['method']} | {fmt(row['gain'], '+')} | {fmt(row['held_out_gain'], '+')} | "
            f"{fmt(row['class_iou_gain'], '+')} | {row['support']} | {row['reason'] or '–'} |"
        )
    return lines


def summary_markdown(summary: dict[str, Any]) -> str:
    """A markdown digest of a :func:`qa_summary`: mIoU per field with deltas, agreement and failure counts."""

    def fmt(value: Any) -> str:
        return "–" if value is None else f"{value:.3f}"

    lines = []
    for evaluation in summary.get("evaluations", []):
        lines += [
            f"**{evaluation['key']}** (ground truth `{evaluation['gt_field']}`){stale_note(evaluation)}",
            "",
            "| field | mIoU (summed) | mIoU (mean of images) | accuracy | Δ mIoU |",
            "|---|---|---|---|---|",
        ]
        for f in evaluation["fields"]:
            lines.append(
                f"| {f['field']} | {fmt(f['miou'])} | {fmt(f['miou_mean_of_images'])} | "
                f"{fmt(f['pixel_accuracy'])} | {fmt(f['delta'])} |"
            )
        lines.append("")
    for agreement in summary.get("agreements", []):
        lines.append(
            f"**{agreement['key']}**: agreement `{agreement['field_a']}` vs `{agreement['field_b']}` "
            f"mIoU {fmt(agreement['miou'])}{stale_note(agreement)}"
        )
    for failure in summary.get("failures", []):
        counts = ", ".join(f"{mode} {n}" for mode, n in failure["counts"].items())
        lines.append(f"**{failure['key']}** (`{failure['pred_field']}`): {counts}{stale_note(failure)}")
    for calibration in summary.get("calibrations", []):
        lines += ["", *calibration_markdown(calibration)]
    return "\n".join(lines) if lines else "No samseg evaluation yet: run **samseg: evaluate IoU**."
