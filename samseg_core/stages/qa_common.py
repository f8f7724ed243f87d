"""Helpers shared by the QA stages (evaluation, failure modes): class names, mask reading, per-sample isolation."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from samseg_core.labels import mask_targets_of, read_segmentation
from samseg_core.runner import SampleItem, StageResult


def resolve_class_names(
    samples: Any, gt_field: str | None, pred_fields: Sequence[str], reduce_zero_label: bool = False
) -> dict[int, str]:
    """Class id -> name from the mask targets of the ground truth (shifted with ``reduce_zero_label``), then of
    the prediction fields for ids the ground truth does not name."""
    names: dict[int, str] = {}
    if gt_field:
        for class_id, name in mask_targets_of(samples, gt_field).items():
            if reduce_zero_label:
                if class_id > 0:
                    names[class_id - 1] = name
            else:
                names[class_id] = name
    for field in pred_fields:
        for class_id, name in mask_targets_of(samples, field).items():
            names.setdefault(class_id, name)
    return names


def resolve_class_ids(
    classes: Sequence[int | str] | None, names: Mapping[int, str]
) -> tuple[int, ...] | None:
    """Class ids of a subset given by ids or names; with known class names, every id and name must be one."""
    if classes is None:
        return None
    by_name = {name: class_id for class_id, name in names.items()}
    ids = []
    for item in classes:
        if isinstance(item, (int, np.integer)) or str(item).isdigit():
            class_id = int(item)
            if names and class_id not in names:
                raise ValueError(
                    f"class id {class_id} is not in the mask targets; known ids: {sorted(names)}"
                )
            ids.append(class_id)
        elif item in by_name:
            ids.append(by_name[item])
        else:
            raise ValueError(f"unknown class '{item}'; known classes: {sorted(by_name)}")
    return tuple(sorted(set(ids)))


def check_mask_targets_agree(
    samples: Any,
    gt_param: str,
    gt_field: str | None,
    pred_fields: Sequence[str],
    reduce_zero_label: bool = False,
) -> None:
    """Raises a StageParameterError when a prediction's own mask targets name a ground-truth class id
    differently (its ids would then mean other classes and every score would be wrong). Fields that only
    inherit the dataset's default mask targets are not compared."""
    from samseg_core.errors import StageParameterError

    if not gt_field:
        return
    own = samples._dataset.mask_targets
    shift = 1 if reduce_zero_label else 0
    reference = {int(k) - shift: v for k, v in (own.get(gt_field) or {}).items() if int(k) - shift >= 0}
    for field in pred_fields:
        targets = {int(k): v for k, v in (own.get(field) or {}).items()}
        clashes = {k: (reference[k], v) for k, v in targets.items() if k in reference and reference[k] != v}
        if clashes:
            detail = ", ".join(f"{k}: '{a}' vs '{b}'" for k, (a, b) in sorted(clashes.items())[:4])
            raise StageParameterError(
                gt_param,
                f"mask_targets of '{gt_field}' and '{field}' name the same ids differently ({detail})",
                f"map the prediction's ids to the ground truth's classes (dataset.mask_targets['{field}']) or "
                "set reduce_zero_label if the ground truth counts 0 as unlabeled",
            )


def require_mask(label: Any, field: str) -> np.ndarray:
    """The class map of a segmentation label; ValueError naming the field when there is none."""
    mask = read_segmentation(label)
    if mask is None:
        raise ValueError(f"no segmentation mask in '{field}'")
    return mask


def per_item_process(
    score: Callable[[SampleItem], dict[str, Any]],
) -> Callable[[list[SampleItem]], list[StageResult]]:
    """Wraps a per-sample scorer into a batch ``process``: each sample's exception is its own result, so the
    runner never retries a batch (which would count the samples before the failing one twice)."""

    def process(items: list[SampleItem]) -> list[StageResult]:
        results: list[StageResult] = []
        for item in items:
            try:
                results.append(score(item))
            except Exception as err:  # recorded per sample by the runner
                results.append(err)
        return results

    return process


def nan_to_none(value: float) -> float | None:
    """A float for storage, with nan (and None) as None."""
    return None if value is None or math.isnan(value) else float(value)
