"""Relabeling queues: tag the worst samples and their failure labels, save views, optionally send to annotators.

A queue named ``name`` owns what it creates, and records it in ``dataset.info["samseg_queues"][name]``: the
sample tag ``name``, the label tag ``name`` on failure labels, and the saved views ``name`` (queued samples,
worst IoU first) and ``name-<mode>`` (queued samples with a failure of that mode). Re-running updates them in
place: samples that left the queue lose the tag, nothing is duplicated. A tag or saved view of that name that
the queue did not create is never touched unless ``overwrite=True``.

Label Studio gets a semantic ``fo.Segmentation`` as brush regions, one per class, staged in a ``fo.Detections``
field ``<annotation_field>_<anno_key>`` (FiftyOne's Label Studio backend cannot send a Segmentation, and reads a
brush back as a 0/255 mask without its class); :func:`load_relabel_results` paints them back into the
Segmentation of each sample whose regions the annotators changed, and leaves the others as they were.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from samseg_core.errors import FieldExistsError, StageParameterError
from samseg_core.failures import FAILURE_MODES
from samseg_core.runner import RunSummary
from samseg_core.stages import annotation_projects as projects
from samseg_core.stages.eval_runs import AGREEMENT, FAILURES, IOU
from samseg_core.stages.options import StageOptions, input_run, option, queue_name
from samseg_core.stages.registry import StageSpec, stage
from samseg_core.stages.run_options import RunOptions

INFO_KEY = "samseg_queues"
FailureMode = Literal["missing", "incomplete", "overlapping"]


@dataclass
class RelabelQueue(RunSummary):
    """What :func:`build_relabel_queue` did: a RunSummary (``processed`` = samples queued) plus the queue."""

    name: str = ""
    sample_ids: list[str] = field(default_factory=list)
    views: list[str] = field(default_factory=list)
    tagged_labels: int = 0
    added: int = 0
    removed: int = 0
    anno_key: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (without the full id list)."""
        return {
            **super().to_dict(),
            "name": self.name,
            "samples": len(self.sample_ids),
            "views": list(self.views),
            "tagged_labels": self.tagged_labels,
            "added": self.added,
            "removed": self.removed,
            "anno_key": self.anno_key,
        }


@dataclass(frozen=True)
class RelabelQueueOptions(StageOptions):
    """Options of :func:`build_relabel_queue`."""

    eval_key: str | None = input_run(
        "samseg_iou", (IOU, AGREEMENT), "IoU or agreement run whose per-sample mIoU ranks the queue (worst first)",
        label="Rank by evaluation",
    )  # fmt: skip
    name: str = queue_name(
        "relabel", "Queue name: the sample and label tag, and saved views name and name-<mode>"
    )
    failures_key: str | None = input_run(
        None, (FAILURES,), "A detect_failures run: samples with failures of the chosen modes are queued",
        label="Failure run",
    )  # fmt: skip
    modes: tuple[FailureMode, ...] = option(
        FAILURE_MODES, "Failure modes that queue a sample and whose labels get tagged", label="Failure modes"
    )
    max_samples: int | None = option(None, "Keep at most this many samples (the worst)", ge=1)
    miou_below: float | None = option(None, "Queue samples whose mIoU is below this", ge=0.0, le=1.0)
    backend: str | None = option(
        None, "Annotation backend configured in FiftyOne (cvat, labelstudio, ...): send the queue to annotators",
        label="Annotation backend (optional)",
    )  # fmt: skip
    anno_key: str | None = option(
        None, "Annotation run key (default <name>_<timestamp>)", label="Annotation key"
    )
    annotation_field: str | None = option(
        None, "Field annotators correct (default: the evaluation's ground truth)", label="Field to correct"
    )
    annotate_kwargs: Mapping[str, Any] | None = option(
        None, "Further arguments of FiftyOne's annotate() (label_schema, classes, ...)", python_only=True
    )

    def check(self, samples: Any) -> None:
        if self.eval_key is None and self.failures_key is None:
            raise StageParameterError(
                "eval_key", "no evaluation and no failure run given", "pass eval_key or failures_key"
            )
        if self.backend is not None:
            _check_backend(samples, self)


RELABEL_QUEUE = StageSpec(
    name="build_relabel_queue",
    label="build relabel queue",
    description="Tag worst samples and failure labels, save views, optionally send to CVAT / Label Studio",
    options=RelabelQueueOptions,
    positional=("eval_key", "name"),
    aliases={"failures_field": "failures_key", "label_field": "annotation_field"},
    plans_outputs=True,
    next_step="open the queue's saved view from the QA panel, or annotate it (see README: QA review session)",
)


def queue_records(samples: Any) -> dict[str, dict[str, Any]]:
    """The relabel queues recorded on the dataset: name -> record (read from the database)."""
    dataset = samples._dataset
    doc = _datasets(dataset).find_one({"_id": dataset._doc.id}, {f"info.{INFO_KEY}": 1}) or {}
    return dict((doc.get("info") or {}).get(INFO_KEY) or {})


def _datasets(dataset: Any) -> Any:
    import fiftyone.core.odm as foo

    return foo.get_db_conn().datasets


def _save_record(dataset: Any, name: str, record: dict[str, Any] | None) -> None:
    """Sets (or removes) this queue's record only: other queues' records and the rest of ``info`` are never
    rewritten from this process's copy."""
    key = f"info.{INFO_KEY}.{name}"
    update = {"$unset": {key: ""}} if record is None else {"$set": {key: record}}
    _datasets(dataset).update_one({"_id": dataset._doc.id}, update)
    dataset.reload()


def _check_backend(samples: Any, options: RelabelQueueOptions) -> None:
    import fiftyone as fo

    backends = sorted(fo.annotation_config.backends)
    if options.backend not in backends:
        raise StageParameterError(
            "backend", f"'{options.backend}' is not a configured annotation backend", f"use one of {backends}"
        )
    if options.anno_key and options.anno_key in samples._dataset.list_annotation_runs():
        raise FieldExistsError(
            "anno_key", f"annotation run '{options.anno_key}' already exists", "choose another key"
        )
    label_field = _annotation_field(samples._dataset, options)
    if options.anno_key and _sends_regions(samples._dataset, options.backend, label_field):
        staged = regions_field(label_field, options.anno_key)
        if samples._dataset.get_field(staged) is not None:
            raise FieldExistsError("anno_key", f"field '{staged}' already exists", "choose another key")


def view_name(name: str, mode: str | None = None) -> str:
    """Saved-view name of a queue (``name``) or of one of its failure modes (``name-<mode>``)."""
    return name if mode is None else f"{name}-{mode}"


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
        raise FieldExistsError(
            "name",
            f"{' and '.join(problems)} already exist and were not created by relabel queue '{name}'",
            "choose another name, or pass overwrite=True to take them over",
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


@stage(RELABEL_QUEUE)
def build_relabel_queue(samples: Any, options: RelabelQueueOptions, run: RunOptions) -> RelabelQueue:
    """Builds (or updates) relabeling queue ``name`` from an IoU or agreement run and/or a failure run.

    Only the samples of ``samples`` can enter the queue (tags left on other samples by an earlier run of the same
    queue are removed). A tag or saved view of that name that the queue did not create is refused unless
    ``overwrite=True``; with ``backend`` the queue view is sent through FiftyOne's ``annotate()``.

    Returns:
        a :class:`RelabelQueue` (``processed``: samples queued).
    """
    started = time.monotonic()
    dataset = samples._dataset
    miou_field = f"{options.eval_key}_miou" if options.eval_key else None
    failures_field = options.failures_key
    modes = list(options.modes)
    record = queue_records(dataset).get(options.name)
    label_fields = sorted(
        {*([failures_field] if failures_field else []), *(record or {}).get("label_fields", [])}
    )
    if not run.overwrite:
        _check_ownership(dataset, options.name, record, label_fields)

    ids = select_queue(
        samples,
        miou_field,
        failures_field,
        modes,
        miou_below=options.miou_below,
        max_samples=options.max_samples,
    )
    previous = set(dataset.match_tags(options.name).values("id"))
    leaving = previous - set(ids)
    if leaving:
        dataset.select(list(leaving)).untag_samples(options.name)
    if ids:
        dataset.select(ids).tag_samples(options.name)  # $addToSet: never duplicates
    tagged_labels = _retag_labels(dataset, options.name, ids, label_fields, failures_field, modes)
    views = _save_views(dataset, options.name, record, miou_field, failures_field, modes)

    queue = RelabelQueue(
        stage=RELABEL_QUEUE.name, label_field=options.name, processed=len(ids), skipped=len(samples) - len(ids),
        name=options.name, sample_ids=ids, views=views, tagged_labels=tagged_labels,
        added=len(set(ids) - previous), removed=len(leaving),
    )  # fmt: skip
    anno_keys = list((record or {}).get("anno_keys", []))
    regions = dict((record or {}).get("regions", {}))
    # recorded before sending: a failed upload leaves a queue this call owns, so a re-run needs no overwrite
    _save_record(
        dataset, options.name, _record(options, views, failures_field, modes, ids, anno_keys, regions)
    )
    if options.backend:
        queue.anno_key, staged = _send_to_annotation(dataset, options)
        anno_keys.append(queue.anno_key)
        if staged:
            regions[queue.anno_key] = staged
        _save_record(
            dataset, options.name, _record(options, views, failures_field, modes, ids, anno_keys, regions)
        )
    queue.seconds = time.monotonic() - started
    return queue


def _record(
    options: RelabelQueueOptions,
    views: list[str],
    failures_field: str | None,
    modes: list[str],
    ids: list[str],
    anno_keys: list[str],
    regions: dict[str, dict[str, str]],
) -> dict[str, Any]:
    return {
        "tag": options.name,
        "views": views,
        "label_fields": [failures_field] if failures_field else [],
        "eval_key": options.eval_key,
        "failures_key": failures_field,
        "modes": modes,
        "samples": len(ids),
        "anno_keys": anno_keys,
        "regions": regions,
        "updated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


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


def _annotation_field(dataset: Any, options: RelabelQueueOptions) -> str | None:
    """The field annotators correct: ``annotation_field``, ``annotate_kwargs["label_field"]``, else the
    evaluation's ground truth; None when ``annotate_kwargs`` has a ``label_schema``."""
    kwargs = options.annotate_kwargs or {}
    if options.annotation_field or "label_field" in kwargs:
        return options.annotation_field or kwargs["label_field"]
    if "label_schema" in kwargs:
        return None
    gt_field = None
    if options.eval_key:
        config = dataset.get_run_info(options.eval_key).config
        gt_field = getattr(config, "gt_field", None) or getattr(config, "baseline_field", None)
    if not gt_field:
        raise StageParameterError("annotation_field", "no field to correct", "pass annotation_field=...")
    return gt_field


def regions_field(label_field: str, anno_key: str) -> str:
    """The ``fo.Detections`` field that stages a Segmentation's brush regions for annotation run ``anno_key``."""
    return f"{label_field}_{anno_key}"


def _sends_regions(dataset: Any, backend: str | None, label_field: str | None) -> bool:
    """Whether ``label_field`` goes to ``backend`` as brush regions (a Segmentation sent to Label Studio)."""
    import fiftyone as fo

    if backend != "labelstudio" or not label_field:
        return False
    field = dataset.get_field(label_field)
    return getattr(field, "document_type", None) is fo.Segmentation


def _send_to_annotation(dataset: Any, options: RelabelQueueOptions) -> tuple[str, dict[str, str] | None]:
    """Sends the queue view to the annotation backend through FiftyOne's ``annotate()``. Returns the key and,
    for a Segmentation sent to Label Studio, ``{"label_field", "regions_field"}``. A failed upload leaves no
    annotation run and no staged field behind."""
    kwargs = dict(options.annotate_kwargs or {})
    label_field = _annotation_field(dataset, options)
    if label_field:
        kwargs["label_field"] = label_field
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d_%H%M%S")
    anno_key = options.anno_key or f"{options.name.replace('-', '_')}_{stamp}"
    view = dataset.load_saved_view(view_name(options.name))
    staged = None
    if _sends_regions(dataset, options.backend, label_field):
        staged = {"label_field": label_field, "regions_field": regions_field(label_field, anno_key)}
        kwargs.update(_stage_regions(view, **staged))
    projects_before = None
    if options.backend == projects.LABEL_STUDIO:
        kwargs.setdefault("project_name", projects.project_name(dataset.name, anno_key))
        projects_before = projects.existing_projects(kwargs)
    try:
        view.annotate(anno_key, backend=options.backend, **kwargs)
    except Exception:
        if anno_key in dataset.list_annotation_runs():
            dataset.delete_annotation_run(anno_key)  # FiftyOne registers the run before uploading
        if staged and dataset.get_field(staged["regions_field"]) is not None:
            dataset.delete_sample_field(staged["regions_field"])
        if projects_before is not None:
            projects.delete_new_projects(kwargs, projects_before, kwargs["project_name"])
        raise
    return anno_key, staged


def _mask_names(dataset: Any, label_field: str) -> dict[int, str]:
    targets = dataset.mask_targets.get(label_field) or dataset.default_mask_targets or {}
    return {int(value): name for value, name in targets.items()}


def _stage_regions(view: Any, label_field: str, regions_field: str) -> dict[str, Any]:
    """Writes each sample's Segmentation as one masked Detection per class into ``regions_field``; returns
    the ``annotate()`` arguments that send that field as Label Studio brushes with every class offered."""
    import fiftyone as fo

    names = _mask_names(view._dataset, label_field)
    regions = []
    for seg in view.values(label_field):
        mask = seg.get_mask() if seg is not None else None
        values = [] if mask is None else [int(v) for v in np.unique(mask) if v != 0]
        regions.append(
            fo.Detections(
                detections=[fo.Detection.from_mask(mask == v, label=names.get(v, str(v))) for v in values]
            )
        )
    classes = sorted(
        {*(n for v, n in names.items() if v != 0), *(d.label for r in regions for d in r.detections)}
    )
    view.set_values(regions_field, regions)
    return {"label_field": regions_field, "label_type": "instances", "classes": classes}


def _paint_regions(detections: Any, shape: tuple[int, int], values: dict[str, int], dtype: Any) -> np.ndarray:
    """The semantic map of brush regions (later regions win overlaps; unpainted pixels are background)."""
    out = np.zeros(shape, dtype)
    for det in detections.detections if detections is not None else []:
        value = values.get(det.label)
        if value is not None and det.mask is not None:
            out[det.to_segmentation(frame_size=(shape[1], shape[0]), target=1).get_mask() > 0] = value
    return out


def _painted(dataset: Any, staged: dict[str, str]) -> dict[str, Any]:
    """Sample id -> (its Segmentation, the semantic map its staged regions paint), for the staged samples."""
    values = {name: value for value, name in _mask_names(dataset, staged["label_field"]).items()}
    view = dataset.exists(staged["regions_field"])
    painted = {}
    for sid, seg, regions in zip(*view.values(["id", staged["label_field"], staged["regions_field"]])):
        mask = seg.get_mask() if seg is not None else None
        if mask is not None:
            painted[sid] = (seg, _paint_regions(regions, mask.shape, values, mask.dtype))
    return painted


def load_relabel_results(
    samples: Any, name: str = "relabel", anno_key: str | None = None, *, cleanup: bool = False, **kwargs: Any
) -> str:
    """Loads the annotators' corrections of queue ``name`` back into the dataset (FiftyOne's
    ``load_annotations``); ``anno_key`` defaults to the queue's latest annotation run. Returns the key used.

    Brush regions staged for a Segmentation (Label Studio) are painted back into it for the samples whose
    regions changed; the others keep their masks as they were."""
    dataset = samples._dataset
    record = queue_records(dataset).get(name) or {}
    if anno_key is None:
        keys = record.get("anno_keys") or []
        if not keys:
            raise ValueError(f"relabel queue '{name}' was never sent to annotation")
        anno_key = keys[-1]
    staged = (record.get("regions") or {}).get(anno_key)
    before = _painted(dataset, staged) if staged else {}
    dataset.load_annotations(anno_key, cleanup=cleanup, **kwargs)
    if staged:
        corrected = {}
        for sid, (seg, painted) in _painted(dataset, staged).items():
            if sid in before and not np.array_equal(painted, before[sid][1]):
                seg.mask, seg.mask_path = painted, None  # same label id, tags and attributes
                corrected[sid] = seg
        if corrected:
            dataset.set_values(staged["label_field"], corrected, key_field="id")
    return anno_key


def delete_relabel_queue(
    samples: Any, name: str = "relabel", *, cleanup: bool = False, **kwargs: Any
) -> bool:
    """Removes what queue ``name`` created: its sample tag, label tags, saved views, the annotation runs it
    sent (with ``cleanup=True`` also their projects and tasks in the annotation tool, reached with the
    credentials in ``kwargs``, e.g. ``url=``, ``api_key=``, else FiftyOne's annotation config) and the fields
    that staged brush regions for them, and its record. False if there is no such queue.

    This ends the queue's round trip: load the annotators' corrections first (:func:`load_relabel_results`).
    """
    dataset = samples._dataset
    record = queue_records(dataset).get(name)
    if record is None:
        return False
    runs = [key for key in record.get("anno_keys", []) if key in dataset.list_annotation_runs()]
    if cleanup:  # the annotation tool first: a refusal there leaves the dataset as it was
        for anno_key in runs:
            dataset.load_annotation_results(anno_key, cache=False, **kwargs).cleanup()
    for anno_key in runs:
        dataset.delete_annotation_run(anno_key)
    for staged in (record.get("regions") or {}).values():
        if dataset.get_field(staged["regions_field"]) is not None:
            dataset.delete_sample_field(staged["regions_field"])
    dataset.untag_samples(name)
    present = [f for f in record.get("label_fields", []) if dataset.get_field(f) is not None]
    if present:
        dataset.untag_labels(name, label_fields=present)
    for view in record.get("views", []):
        if dataset.has_saved_view(view):
            dataset.delete_saved_view(view)
    _save_record(dataset, name, None)
    return True
