"""samseg's QA runs stored as FiftyOne runs, so they can be listed, reloaded, renamed and deleted.

Every samseg QA run (``kind`` ``iou``, ``agreement`` or ``failures``) is a :class:`SamsegRunConfig` registered
with ``samples.register_run``; its method is ``samseg_<kind>``, so ``dataset.list_runs(method="samseg_iou")``
lists the IoU evaluations. :class:`SamsegRun` knows which sample fields a run wrote (derived from its key, as
FiftyOne's evaluations do), so ``rename_run`` renames them and ``delete_run`` deletes them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import fiftyone.core.runs as fors

IOU, AGREEMENT, FAILURES = "iou", "agreement", "failures"
KINDS = (IOU, AGREEMENT, FAILURES)


def method_of(kind: str) -> str:
    """The FiftyOne run ``method`` of a samseg run kind (``list_runs(method=...)`` filters on it)."""
    return f"samseg_{kind}"


def iou_field_prefix(key: str, field: str, reference: str) -> str:
    """Prefix of the per-sample fields of ``field`` in IoU run ``key``: the key itself for the reference field,
    ``<key>_<field>`` for a compared field."""
    return key if field == reference else f"{key}_{field}"


def iou_sample_fields(
    key: str, pred_field: str, compare_fields: Sequence[str] = (), boundary: bool = True
) -> dict[str, dict[str, str]]:
    """Names of the per-sample fields an IoU run writes, per evaluated field.

    Returns ``{field: {"miou": ..., "accuracy": ..., "boundary_iou": ..., "class_iou": ..., "delta": ...}}``
    (``boundary_iou`` only with ``boundary``, ``delta`` only for compared fields).
    """
    out: dict[str, dict[str, str]] = {}
    for field in [pred_field, *compare_fields]:
        prefix = iou_field_prefix(key, field, pred_field)
        names = {
            "miou": f"{prefix}_miou",
            "accuracy": f"{prefix}_accuracy",
            "class_iou": f"{prefix}_class_iou",
        }
        if boundary:
            names["boundary_iou"] = f"{prefix}_boundary_iou"
        if field != pred_field:
            names["delta"] = f"{prefix}_delta"
        out[field] = names
    return out


def agreement_sample_fields(key: str, heatmap: bool = True) -> dict[str, str]:
    """Names of the per-sample fields an agreement run writes."""
    names = {"miou": f"{key}_miou", "accuracy": f"{key}_accuracy", "class_iou": f"{key}_class_iou"}
    if heatmap:
        names["heatmap"] = f"{key}_disagreement"
    return names


def failure_sample_fields(label_field: str) -> dict[str, str]:
    """Names of the fields a failure run writes: the ``fo.Detections`` field and one count field per mode."""
    from samseg_core.failures import FAILURE_MODES

    return {"objects": label_field, **{mode: f"{label_field}_{mode}" for mode in FAILURE_MODES}}


class SamsegRunConfig(fors.RunConfig):
    """Config of a samseg QA run; every keyword argument is stored (JSON-serialisable values only).

    Args:
        kind: ``"iou"``, ``"agreement"`` or ``"failures"``.
        **kwargs: the run's parameters (fields, thresholds, ...).
    """

    def __init__(self, kind: str = IOU, method: str | None = None, **kwargs: Any) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown samseg run kind '{kind}'; expected one of {KINDS}")
        super().__init__(method=method or method_of(kind), kind=kind, **kwargs)


class SamsegRun(fors.Run):
    """A samseg QA run: knows its sample fields, renames them with the key and deletes them with the run."""

    def get_fields(self, samples: Any, key: str) -> list[str]:
        """Returns the sample fields this run wrote under ``key`` (including the per-sample error field)."""
        config = self.config
        kind = getattr(config, "kind", IOU)
        if kind == IOU:
            per_field = iou_sample_fields(
                key, config.pred_field, config.compare_fields or (), bool(config.boundary)
            )
            names = [name for names in per_field.values() for name in names.values()]
            primary = per_field[config.pred_field]["miou"]
        elif kind == AGREEMENT:
            names = list(agreement_sample_fields(key, bool(config.heatmap)).values())
            primary = names[0]
        else:
            names = list(failure_sample_fields(key).values())
            primary = key
        return [*names, f"{primary}_error"]

    def rename(self, samples: Any, key: str, new_key: str) -> None:
        """Renames the run's sample fields from ``key`` to ``new_key``."""
        dataset = samples._dataset
        old = self.get_fields(samples, key)
        new = self.get_fields(samples, new_key)
        pairs = [(a, b) for a, b in zip(old, new) if dataset.get_field(a) is not None]
        if pairs:
            dataset.rename_sample_fields(dict(pairs))

    def cleanup(self, samples: Any, key: str) -> None:
        """Deletes the run's sample fields."""
        dataset = samples._dataset
        present = [name for name in self.get_fields(samples, key) if dataset.get_field(name) is not None]
        if present:
            dataset.delete_sample_fields(present)

    def _validate_run(self, samples: Any, key: str, existing_info: Any) -> None:
        existing_kind = getattr(existing_info.config, "kind", None)
        if existing_kind != self.config.kind:
            raise ValueError(
                f"run '{key}' is a samseg '{existing_kind}' run; choose another key for a '{self.config.kind}' run"
            )


def register_samseg_run(
    samples: Any, key: str, kind: str, *, fields: Sequence[str], overwrite: bool = True, **params: Any
) -> None:
    """Registers a samseg run of ``kind`` under ``key``, which will write the sample ``fields``.

    An existing run ``key`` of the same kind is replaced when ``overwrite`` (its fields are deleted first), else
    refused. For a new key, values already in ``fields`` belong to no run of ours (the user's own fields) and
    are refused whatever ``overwrite`` says: choose another key.
    """
    from samseg_core.runner import FieldExistsError, check_writable

    if key in samples.list_runs():
        if not overwrite:
            raise FieldExistsError(
                f"run '{key}' already exists; pass overwrite=True to replace it (its fields are deleted first) "
                "or choose another key"
            )
    else:
        try:
            check_writable(samples, fields, skip_existing=False, overwrite=False)
        except FieldExistsError as err:
            raise FieldExistsError(
                f"{err} (they belong to no samseg run '{key}'; choose another key)"
            ) from None
    config = SamsegRunConfig(kind=kind, **params)
    samples.register_run(key, config, overwrite=overwrite, cleanup=True)


def save_samseg_results(samples: Any, key: str, **results: Any) -> Any:
    """Stores JSON-serialisable ``results`` on run ``key``; returns the ``RunResults``."""
    run_results = samples.init_run_results(key, **results)
    samples.save_run_results(key, run_results, overwrite=True)
    return run_results


def list_samseg_runs(samples: Any, kind: str) -> list[str]:
    """Keys of the samseg runs of ``kind`` on the dataset of ``samples``."""
    return samples._dataset.list_runs(method=method_of(kind))


def load_samseg_results(samples: Any, key: str) -> dict[str, Any]:
    """The stored results of a samseg run as a plain dict (reloaded from the database, not the cache)."""
    results = samples._dataset.load_run_results(key, cache=False, load_view=False)
    if results is None:
        return {}
    return {name: getattr(results, name) for name in results.attributes() if name != "cls"}
