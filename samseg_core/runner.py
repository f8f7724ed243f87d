"""Batched iteration of a stage over a FiftyOne sample collection.

Every samseg stage (baseline, refinement, voting, engine, evaluation) runs through :func:`run_stage`, which owns
what they have in common: choosing the samples to process (``skip_existing``), refusing to clobber existing
values (``overwrite``), loading images in a DataLoader, isolating per-sample failures (``skip_failures``),
halving the batch on CUDA out-of-memory, bulk writes per batch (so an interrupted run resumes), and progress.

Crash safety: each batch writes its secondary output fields first and the *primary* output field (the first
one, which ``skip_existing`` looks at) last, so a run killed mid-batch leaves those samples without a primary
value and a resumed run processes them again.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from samseg_core.images import load_rgb

logger = logging.getLogger(__name__)

ProgressArg = bool | Callable[[float], None] | None


class FieldExistsError(ValueError):
    """Raised when a stage would overwrite values the caller did not ask to overwrite."""


@dataclass
class SampleItem:
    """One sample handed to a stage: its id, file path, decoded RGB image and requested input fields."""

    id: str
    filepath: str
    image: np.ndarray | None
    inputs: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunSummary:
    """What a stage did: counts of processed / skipped / failed samples, per-sample errors and timings."""

    stage: str
    label_field: str
    processed: int = 0
    skipped: int = 0
    failed: int = 0
    errors: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Returns a JSON-serialisable dict (operators return this to the App)."""
        return {
            "stage": self.stage,
            "label_field": self.label_field,
            "processed": self.processed,
            "skipped": self.skipped,
            "failed": self.failed,
            "errors": dict(self.errors),
            "seconds": round(self.seconds, 3),
            **self.extra,
        }

    def __str__(self) -> str:
        return (
            f"{self.stage} -> '{self.label_field}': {self.processed} processed, {self.skipped} skipped, "
            f"{self.failed} failed in {self.seconds:.1f}s"
        )


StageResult = dict[str, Any] | Exception
ProcessFn = Callable[[list[SampleItem]], list[StageResult]]


class _ImageFiles(Dataset):
    """Decodes images in DataLoader workers; a bad file becomes its exception, not a crashed worker."""

    def __init__(self, filepaths: Sequence[str], max_side: int | None) -> None:
        self.filepaths = list(filepaths)
        self.max_side = max_side

    def __len__(self) -> int:
        return len(self.filepaths)

    def __getitem__(self, index: int) -> np.ndarray | Exception:
        try:
            return load_rgb(self.filepaths[index])
        except Exception as err:  # reported per sample by the runner
            return err


def _collate(batch: list[Any]) -> list[Any]:
    return batch


def error_field_for(label_field: str) -> str:
    """Returns the per-sample error field name of a stage writing ``label_field``."""
    return f"{label_field}_error"


def ids_with_values(samples: Any, field_name: str) -> set[str]:
    """Returns the ids of samples in ``samples`` whose ``field_name`` is set (empty if the field is absent)."""
    if samples.get_field(field_name) is None:
        return set()
    return set(samples.exists(field_name).values("id"))


def check_writable(
    samples: Any, output_fields: Sequence[str], skip_existing: bool, overwrite: bool
) -> set[str]:
    """Returns the ids to skip; raises FieldExistsError when existing values would be clobbered.

    With ``overwrite`` nothing is skipped; with ``skip_existing`` samples whose primary field is set are skipped
    (secondary fields of those samples are left alone); otherwise any existing value is an error.
    """
    primary = output_fields[0]
    existing = ids_with_values(samples, primary)
    if overwrite:
        return set()
    if skip_existing:
        return existing
    clobbered = {name: len(ids_with_values(samples, name)) for name in output_fields}
    clobbered = {name: n for name, n in clobbered.items() if n}
    if clobbered:
        detail = ", ".join(f"'{name}' ({n} samples)" for name, n in clobbered.items())
        raise FieldExistsError(
            f"{detail} already hold values. Pass overwrite=True to replace them, skip_existing=True to "
            "process only samples without them, or choose another label_field."
        )
    return set()


def _progress_reporter(progress: ProgressArg, total: int, stage: str) -> Callable[[int], None]:
    if callable(progress):
        return lambda done: progress(done / max(total, 1))
    if progress:
        started = time.monotonic()

        def report(done: int) -> None:
            rate = done / max(time.monotonic() - started, 1e-6)
            logger.info("%s: %d/%d samples (%.2f/s)", stage, done, total, rate)
            print(f"\r{stage}: {done}/{total} samples ({rate:.2f}/s)", end="\n" if done >= total else "")

        return report
    return lambda done: None


def _chunks(seq: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(seq), size):
        yield seq[start : start + size]


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


def process_with_fallback(process: ProcessFn, items: list[SampleItem]) -> list[StageResult]:
    """Runs ``process`` on a batch; on CUDA OOM halves the batch and retries, on other errors isolates samples.

    A whole-batch failure that is not an out-of-memory error is retried one sample at a time, so one bad sample
    gets its own error and the others still get results.
    """
    try:
        results = process(items)
        if len(results) != len(items):
            raise RuntimeError(f"stage returned {len(results)} results for {len(items)} samples")
        return results
    except Exception as err:
        if _is_oom(err) and len(items) > 1:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            half = len(items) // 2
            logger.warning(
                "out of memory on a batch of %d; retrying as %d + %d", len(items), half, len(items) - half
            )
            return process_with_fallback(process, items[:half]) + process_with_fallback(process, items[half:])
        if len(items) == 1:
            return [err]
        return [process_with_fallback(process, [item])[0] for item in items]


def describe_error(err: BaseException) -> str:
    """Returns a one-line readable error for a per-sample error field."""
    message = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {message}" if message else type(err).__name__


def run_stage(
    samples: Any,
    *,
    stage: str,
    output_fields: Sequence[str],
    process: ProcessFn,
    input_fields: Sequence[str] = (),
    load_images: bool = True,
    batch_size: int = 8,
    num_workers: int = 0,
    skip_existing: bool = False,
    overwrite: bool = False,
    skip_failures: bool = True,
    progress: ProgressArg = None,
    max_image_side: int | None = None,
) -> RunSummary:
    """Runs ``process`` over ``samples`` in batches and writes its per-sample results in bulk.

    Args:
        samples: a FiftyOne dataset or view.
        stage: the stage's name, for summaries and logs.
        output_fields: fields ``process`` writes; the first is the primary one (``skip_existing`` looks at it).
        process: maps a batch of :class:`SampleItem` to one result per item: a dict ``{field: value}`` (a value
            of ``None`` clears the field) or the exception that sample raised.
        input_fields: sample fields to read and hand to ``process`` in ``SampleItem.inputs``.
        load_images: whether to decode each sample's image (RGB uint8) in a DataLoader.
        batch_size: samples per ``process`` call and per bulk write.
        num_workers: DataLoader workers decoding images (0 decodes in this process).
        skip_existing: skip samples whose primary output field is already set (how interrupted runs resume).
        overwrite: replace existing values; without it (and without ``skip_existing``) existing values raise.
        skip_failures: record a failing sample's error in ``<primary>_error`` and go on; else raise it.
        progress: True to print progress, a callable taking the fraction done, or None/False.
        max_image_side: passed to nothing here; stages downscale themselves (kept for a uniform signature).

    Returns:
        a :class:`RunSummary`.
    """
    del max_image_side
    if not output_fields:
        raise ValueError("run_stage needs at least one output field")
    started = time.monotonic()
    primary = output_fields[0]
    summary = RunSummary(stage=stage, label_field=primary)
    skip = check_writable(samples, output_fields, skip_existing, overwrite)

    all_ids, all_paths = samples.values(["id", "filepath"])
    todo = [(sid, path) for sid, path in zip(all_ids, all_paths) if sid not in skip]
    summary.skipped = len(all_ids) - len(todo)
    report = _progress_reporter(progress, len(todo), stage)
    error_field = error_field_for(primary)
    dataset = samples._dataset
    has_error_field = dataset.get_field(error_field) is not None

    images: Iterator[list[Any]]
    if load_images and todo:
        loader = DataLoader(
            _ImageFiles([path for _, path in todo], None),
            batch_size=batch_size,
            num_workers=num_workers,
            collate_fn=_collate,
            shuffle=False,
        )
        images = iter(loader)
    else:
        images = iter([[None] * len(chunk) for chunk in _chunks(todo, batch_size)])

    done = 0
    for chunk in _chunks(todo, batch_size):
        batch_images = next(images)
        ids = [sid for sid, _ in chunk]
        inputs = _read_inputs(samples, ids, input_fields)
        items, results = [], [None] * len(chunk)
        for i, ((sid, path), image) in enumerate(zip(chunk, batch_images)):
            if isinstance(image, Exception):
                results[i] = image
            else:
                items.append((i, SampleItem(sid, path, image, {f: inputs[f][sid] for f in input_fields})))
        if items:
            for (i, _), result in zip(items, process_with_fallback(process, [item for _, item in items])):
                results[i] = result

        writes: dict[str, dict[str, Any]] = {name: {} for name in output_fields}
        errors: dict[str, str | None] = {}
        for sid, result in zip(ids, results):
            if isinstance(result, Exception):
                if not skip_failures:
                    raise result
                errors[sid] = describe_error(result)
                logger.debug("sample %s failed:\n%s", sid, "".join(traceback.format_exception(result)))
                continue
            errors[sid] = None
            for name in output_fields:
                if name in result:
                    writes[name][sid] = result[name]
            for name, value in result.items():
                if name not in writes:
                    writes[name] = {sid: value}
                elif sid not in writes[name]:
                    writes[name][sid] = value

        secondary = [name for name in writes if name != primary]
        for name in [*secondary, primary]:
            if writes[name]:
                dataset.set_values(name, writes[name], key_field="id")
        if any(errors.values()) or has_error_field:
            dataset.set_values(error_field, errors, key_field="id")
            has_error_field = True

        failed = {sid: msg for sid, msg in errors.items() if msg}
        summary.errors.update(failed)
        summary.failed += len(failed)
        summary.processed += len(chunk) - len(failed)
        done += len(chunk)
        report(done)

    summary.seconds = time.monotonic() - started
    return summary


def _read_inputs(samples: Any, ids: Sequence[str], input_fields: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Reads ``input_fields`` of the samples with ``ids``; a field absent from the schema reads as None."""
    if not input_fields:
        return {}
    present = [f for f in input_fields if samples.get_field(f) is not None]
    out: dict[str, dict[str, Any]] = {f: dict.fromkeys(ids) for f in input_fields}
    if present:
        view = samples.select(list(ids))
        columns = view.values(["id", *present])
        for f, values in zip(present, columns[1:]):
            out[f].update(zip(columns[0], values))
    return out
