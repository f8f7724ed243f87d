"""samseg's QA runs stored as FiftyOne runs, so they can be listed, reloaded, renamed and deleted.

Every samseg QA run (``kind`` ``iou``, ``agreement``, ``failures``, ``fusion``) is a :class:`SamsegRunConfig` registered with
``samples.register_run``; its method is ``samseg_<kind>``, so ``dataset.list_runs(method="samseg_iou")`` lists
the IoU evaluations. A run's sample fields all start with its key; the config stores their suffixes, so
:class:`SamsegRun` knows them under any key: ``rename_run`` renames them and ``delete_run`` deletes them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import fiftyone.core.runs as fors

IOU, AGREEMENT, FAILURES, FUSION = "iou", "agreement", "failures", "fusion"
KINDS = (IOU, AGREEMENT, FAILURES, FUSION)


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


def failure_sample_fields(key: str) -> dict[str, str]:
    """Names of the fields a failure run writes: the ``fo.Detections`` field ``key`` and a count per mode."""
    from samseg_core.failures import FAILURE_MODES

    return {"objects": key, **{mode: f"{key}_{mode}" for mode in FAILURE_MODES}}


def field_suffixes(key: str, fields: Sequence[str]) -> list[str]:
    """The parts of ``fields`` after the run key (every run field starts with it)."""
    bad = [f for f in fields if not f.startswith(key)]
    if bad:
        raise ValueError(f"run fields {bad} do not start with the run key '{key}'")
    return [f[len(key) :] for f in fields]


class SamsegRunConfig(fors.RunConfig):
    """Config of a samseg QA run; every keyword argument is stored (JSON-serialisable values only).

    Args:
        kind: ``"iou"``, ``"agreement"`` or ``"failures"``.
        field_suffixes: the run's sample fields without the key (the error field included).
        **kwargs: the run's parameters (fields, thresholds, ...).
    """

    def __init__(
        self, kind: str = IOU, method: str | None = None, field_suffixes: Sequence[str] = (), **kwargs: Any
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown samseg run kind '{kind}'; expected one of {KINDS}")
        super().__init__(
            method=method or method_of(kind), kind=kind, field_suffixes=list(field_suffixes), **kwargs
        )


class SamsegRun(fors.Run):
    """A samseg QA run: knows its sample fields, renames them with the key and deletes them with the run."""

    def get_fields(self, samples: Any, key: str) -> list[str]:
        """Returns the sample fields this run writes under ``key`` (including the per-sample error field)."""
        return [f"{key}{suffix}" for suffix in getattr(self.config, "field_suffixes", None) or []]

    def rename(self, samples: Any, key: str, new_key: str) -> None:
        """Renames the run's sample fields from ``key`` to ``new_key``."""
        dataset = samples._dataset
        pairs = [
            (a, b)
            for a, b in zip(self.get_fields(samples, key), self.get_fields(samples, new_key))
            if dataset.get_field(a) is not None
        ]
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


def run_kind(samples: Any, key: str) -> str | None:
    """The samseg kind of run ``key`` on the dataset, or None when there is no samseg run of that key."""
    dataset = samples._dataset
    if key not in dataset.list_runs():
        return None
    config = dataset.get_run_info(key).config
    kind = getattr(config, "kind", None)
    return kind if getattr(config, "method", None) == method_of(str(kind)) else None


def run_config(samples: Any, key: str) -> dict[str, Any]:
    """The stored parameters of run ``key`` (what :func:`register_samseg_run` was given)."""
    config = samples._dataset.get_run_info(key).config
    return {k: v for k, v in config.serialize().items() if k not in ("cls", "type", "method", "kind")}


def register_samseg_run(samples: Any, key: str, kind: str, *, replace: bool = False, **config: Any) -> None:
    """Registers a samseg run of ``kind`` under ``key``; with ``replace`` an existing run of that key and its
    fields are deleted first. The caller has validated the key (see :mod:`samseg_core.stages.plan`)."""
    dataset = samples._dataset
    exists = key in dataset.list_runs()
    if exists and replace:
        dataset.delete_run(key)
    if exists and not replace:
        return  # resumed: the stored config is the run's
    samples.register_run(key, SamsegRunConfig(kind=kind, **config), overwrite=False, cleanup=False)


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


def run_record_config(key: str, fields: Sequence[str], params: Mapping[str, Any]) -> dict[str, Any]:
    """A run config of ``params`` plus the suffixes of ``fields`` (which all start with ``key``)."""
    return {"field_suffixes": field_suffixes(key, fields), **dict(params)}
