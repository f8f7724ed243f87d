"""Relabeling queues: tag the worst samples and their failure labels, save views, optionally send to annotators.

A queue named ``name`` owns what it creates, and records it in ``dataset.info["samseg_queues"][name]``: the
sample tag ``name``, the label tag ``name`` on failure labels, and the saved views ``name`` (queued samples,
worst IoU first) and ``name-<mode>`` (queued samples with a failure of that mode). Re-running updates them in
place: samples that left the queue lose the tag, nothing is duplicated. A tag or saved view of that name that
the queue did not create is never touched unless ``overwrite=True``.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from samseg_core.failures import FAILURE_MODES

INFO_KEY = "samseg_queues"


@dataclass
class RelabelQueue:
    """What :func:`build_relabel_queue` did."""

    name: str
    sample_ids: list[str]
    views: list[str]
    tagged_labels: int = 0
    added: int = 0
    removed: int = 0
    anno_key: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (without the full id list)."""
        out = asdict(self)
        out["samples"] = len(out.pop("sample_ids"))
        out.update(out.pop("extra"))
        return out


def queue_records(samples: Any) -> dict[str, dict[str, Any]]:
    """The relabel queues recorded on the dataset: name -> record."""
    return dict((samples._dataset.info or {}).get(INFO_KEY) or {})


def _save_record(dataset: Any, name: str, record: dict[str, Any] | None) -> None:
    info = dict(dataset.info or {})
    queues = dict(info.get(INFO_KEY) or {})
    if record is None:
        queues.pop(name, None)
    else:
        queues[name] = record
    info[INFO_KEY] = queues
    dataset.info = info
    dataset.save()


def view_name(name: str, mode: str | None = None) -> str:
    """Saved-view name of a queue (``name``) or of one of its failure modes (``name-<mode>``)."""
    return name if mode is None else f"{name}-{mode}"


def _miou_field(dataset: Any, eval_key: str | None) -> str | None:
    if not eval_key:
        return None
    from samseg_core.stages.eval_runs import method_of

    if eval_key not in dataset.list_runs(method=method_of("iou")) + dataset.list_runs(
        method=method_of("agreement")
    ):
        raise ValueError(
            f"'{eval_key}' is not a samseg evaluation run on this dataset; run evaluate_iou first"
        )
    return f"{eval_key}_miou"


def _check_ownership(
    dataset: Any, name: str, record: dict[str, Any] | None, label_fields: Sequence[str]
) -> None:
    """Raises when the tag or views named ``name`` exist but were not created by this queue."""
    owned_views = set((record or {}).get("views", []))
    foreign_views = [
        v
        for v in [view_name(name), *(view_name(name, m) for m in FAILURE_MODES)]
        if dataset.has_saved_view(v) and v not in owned_views
    ]
    problems = []
    if foreign_views:
        problems.append(f"saved views {foreign_views}")
    if record is None:
        if name in dataset.count_sample_tags():
            problems.append(f"sample tag '{name}'")
        fields = [f for f in label_fields if dataset.get_field(f) is not None]
        if fields and name in dataset.count_label_tags(label_fields=fields):
            problems.append(f"label tag '{name}'")
    if problems:
        raise ValueError(
            f"{' and '.join(problems)} already exist and were not created by relabel queue '{name}'; "
            "choose another name or pass overwrite=True to take them over"
        )


def _failure_counts(samples: Any, failures_field: str, modes: Sequence[str]) -> dict[str, int]:
    """Number of failure labels of ``modes`` per sample id."""
    from fiftyone import ViewField as F

    expr = F(f"{failures_field}.detections").filter(F("failure_mode").is_in(list(modes))).length()
    ids, counts = samples.values("id"), samples.values(expr)
    return {sid: int(c or 0) for sid, c in zip(ids, counts)}


def select_queue(
    samples: Any,
    miou_field: str | None,
    failures_field: str | None,
    modes: Sequence[str],
    *,
    miou_below: float | None = None,
    max_samples: int | None = None,
) -> list[str]:
    """Ids of the queued samples, worst first.

    A sample is queued when its mIoU is below ``miou_below`` or it has a failure label of ``modes``; with
    neither criterion available, every evaluated sample is a candidate. Worst first = lowest mIoU (samples
    without one last), then most failures; ``max_samples`` keeps the first ones.
    """
    ids = samples.values("id")
    mious = dict(zip(ids, samples.values(miou_field))) if miou_field else {}
    failures = _failure_counts(samples, failures_field, modes) if failures_field else {}
    chosen = []
    for sid in ids:
        miou = mious.get(sid)
        low = miou_below is not None and miou is not None and miou < miou_below
        failing = failures.get(sid, 0) > 0
        if miou_below is None and not failures_field:
            keep = miou is not None  # no criterion: rank every evaluated sample
        else:
            keep = low or failing
        if keep:
            chosen.append(sid)
    chosen.sort(key=lambda sid: (mious.get(sid) is None, mious.get(sid) or 0.0, -failures.get(sid, 0)))
    return chosen[:max_samples] if max_samples is not None else chosen


def _sorted_view(view: Any, miou_field: str | None, failures_field: str | None, modes: Sequence[str]) -> Any:
    from fiftyone import ViewField as F

    if miou_field:
        return view.sort_by(F(miou_field).if_null(2.0))  # worst first; samples without mIoU last
    if failures_field:
        count = F(f"{failures_field}.detections").filter(F("failure_mode").is_in(list(modes))).length()
        return view.sort_by(count, reverse=True)
    return view


def build_relabel_queue(
    samples: Any,
    eval_key: str | None = "samseg_iou",
    name: str = "relabel",
    *,
    max_samples: int | None = None,
    miou_below: float | None = None,
    modes: Sequence[str] = FAILURE_MODES,
    failures_field: str | None = None,
    overwrite: bool = False,
    backend: str | None = None,
    anno_key: str | None = None,
    **annotate_kwargs: Any,
) -> RelabelQueue:
    """Builds (or updates) relabeling queue ``name`` from an IoU evaluation and/or failure labels.

    Args:
        samples: a dataset or view; only its samples can enter the queue (tags left on other samples by an
            earlier run of the same queue are removed).
        eval_key: a samseg IoU (or agreement) run; its ``<eval_key>_miou`` ranks the queue. None to rank by
            failures only.
        name: queue name: sample tag, label tag and saved-view name (views ``name`` and ``name-<mode>``).
        max_samples: keep at most this many samples (the worst).
        miou_below: queue samples whose mIoU is below this.
        modes: failure modes that queue a sample and whose labels get tagged.
        failures_field: a ``detect_failures`` output field (``fo.Detections`` with ``failure_mode``).
        overwrite: take over a tag / saved views of this name that the queue did not create.
        backend: annotation backend (e.g. ``"cvat"``, ``"labelstudio"``, configured by the user); with it or
            ``anno_key``, the queue view is sent through ``annotate()``.
        anno_key: annotation run key (default ``<name>_<timestamp>``).
        **annotate_kwargs: passed to ``annotate()``; ``label_field`` defaults to the evaluation's ground truth.

    Returns:
        a :class:`RelabelQueue`.
    """
    dataset = samples._dataset
    modes = [m for m in modes if m in FAILURE_MODES]
    miou_field = _miou_field(dataset, eval_key)
    if miou_field is None and failures_field is None:
        raise ValueError("build_relabel_queue needs an eval_key or a failures_field")
    if failures_field and dataset.get_field(failures_field) is None:
        raise ValueError(f"no field '{failures_field}' on the dataset; run detect_failures first")
    record = queue_records(dataset).get(name)
    label_fields = sorted(
        {*([failures_field] if failures_field else []), *(record or {}).get("label_fields", [])}
    )
    if not overwrite:
        _check_ownership(dataset, name, record, label_fields)

    ids = select_queue(
        samples, miou_field, failures_field, modes, miou_below=miou_below, max_samples=max_samples
    )
    previous = set(dataset.match_tags(name).values("id"))
    leaving = previous - set(ids)
    if leaving:
        dataset.select(list(leaving)).untag_samples(name)
    if ids:
        dataset.select(ids).tag_samples(name)  # $addToSet: never duplicates

    tagged_labels = _retag_labels(dataset, name, ids, label_fields, failures_field, modes)
    views = _save_views(dataset, name, record, miou_field, failures_field, modes)

    queue = RelabelQueue(
        name=name,
        sample_ids=ids,
        views=views,
        tagged_labels=tagged_labels,
        added=len(set(ids) - previous),
        removed=len(leaving),
    )
    new_record = {
        "tag": name,
        "views": views,
        "label_fields": [failures_field] if failures_field else [],
        "eval_key": eval_key,
        "failures_field": failures_field,
        "modes": list(modes),
        "samples": len(ids),
        "anno_keys": list((record or {}).get("anno_keys", [])),
        "updated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if backend or anno_key:
        queue.anno_key = _send_to_annotation(dataset, name, eval_key, backend, anno_key, annotate_kwargs)
        new_record["anno_keys"] = [*new_record["anno_keys"], queue.anno_key]
    _save_record(dataset, name, new_record)
    return queue


def _retag_labels(
    dataset: Any,
    name: str,
    ids: Sequence[str],
    label_fields: Sequence[str],
    failures_field: str | None,
    modes: Sequence[str],
) -> int:
    """Moves the label tag ``name`` to the failure labels of ``modes`` on the queued samples."""
    from fiftyone import ViewField as F

    present = [f for f in label_fields if dataset.get_field(f) is not None]
    if present:
        dataset.untag_labels(name, label_fields=present)
    if not failures_field or not ids or not modes:
        return 0
    failing = dataset.select(ids).filter_labels(failures_field, F("failure_mode").is_in(list(modes)))
    failing.tag_labels(name, label_fields=[failures_field])
    return int(failing.count(f"{failures_field}.detections"))


def _save_views(
    dataset: Any,
    name: str,
    record: dict[str, Any] | None,
    miou_field: str | None,
    failures_field: str | None,
    modes: Sequence[str],
) -> list[str]:
    """Saves the queue's views and deletes the ones it created earlier that no longer apply."""
    from fiftyone import ViewField as F

    queued = dataset.match_tags(name)
    wanted = {view_name(name): _sorted_view(queued, miou_field, failures_field, modes)}
    if failures_field:
        for mode in modes:
            view = queued.filter_labels(failures_field, F("failure_mode") == mode)
            wanted[view_name(name, mode)] = _sorted_view(view, miou_field, failures_field, [mode])
    for view_key, view in wanted.items():
        dataset.save_view(view_key, view, description=f"samseg relabel queue '{name}'", overwrite=True)
    for stale in set((record or {}).get("views", [])) - set(wanted):
        if dataset.has_saved_view(stale):
            dataset.delete_saved_view(stale)
    return list(wanted)


def _send_to_annotation(
    dataset: Any,
    name: str,
    eval_key: str | None,
    backend: str | None,
    anno_key: str | None,
    annotate_kwargs: dict[str, Any],
) -> str:
    """Sends the queue view to an annotation backend through FiftyOne's ``annotate()``; returns the key."""
    kwargs = dict(annotate_kwargs)
    if "label_field" not in kwargs and "label_schema" not in kwargs:
        gt_field = None
        if eval_key:
            config = dataset.get_run_info(eval_key).config
            gt_field = getattr(config, "gt_field", None) or getattr(config, "field_a", None)
        if not gt_field:
            raise ValueError("pass label_field=... (the field annotators correct)")
        kwargs["label_field"] = gt_field
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d_%H%M%S")
    anno_key = anno_key or f"{name.replace('-', '_')}_{stamp}"
    dataset.load_saved_view(view_name(name)).annotate(anno_key, backend=backend, **kwargs)
    return anno_key


def load_relabel_results(
    samples: Any, name: str = "relabel", anno_key: str | None = None, *, cleanup: bool = False, **kwargs: Any
) -> str:
    """Loads the annotators' corrections of queue ``name`` back into the dataset (FiftyOne's
    ``load_annotations``); ``anno_key`` defaults to the queue's latest annotation run. Returns the key used."""
    dataset = samples._dataset
    if anno_key is None:
        keys = (queue_records(dataset).get(name) or {}).get("anno_keys") or []
        if not keys:
            raise ValueError(f"relabel queue '{name}' was never sent to annotation")
        anno_key = keys[-1]
    dataset.load_annotations(anno_key, cleanup=cleanup, **kwargs)
    return anno_key


def delete_relabel_queue(samples: Any, name: str = "relabel") -> bool:
    """Removes what queue ``name`` created (sample tag, label tags, saved views, record); False if unknown."""
    dataset = samples._dataset
    record = queue_records(dataset).get(name)
    if record is None:
        return False
    dataset.untag_samples(name)
    present = [f for f in record.get("label_fields", []) if dataset.get_field(f) is not None]
    if present:
        dataset.untag_labels(name, label_fields=present)
    for view in record.get("views", []):
        if dataset.has_saved_view(view):
            dataset.delete_saved_view(view)
    _save_record(dataset, name, None)
    return True
