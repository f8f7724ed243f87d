"""Batched iteration of a stage over a FiftyOne sample collection.

Every samseg stage (baseline, refinement, voting, engine, evaluation) runs through :func:`run_stage`, which owns
what they have in common: choosing the samples to process (``skip_existing``), refusing to clobber existing
values (``overwrite``), loading images in a DataLoader, isolating per-sample failures (``skip_failures``),
halving the batch on CUDA out-of-memory, bulk writes per batch (so an interrupted run resumes), and progress.

Crash safety: each batch writes its secondary output fields and the error field first and the *primary* output
field (the first one, which ``skip_existing`` looks at) last, so a run killed mid-batch leaves those samples
without a primary value and a resumed run processes them again.
"""

from __future__ import annotations

import logging
import time
import traceback
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch
from pymongo.errors import ConnectionFailure
from torch.utils.data import DataLoader, Dataset

from samseg_core.images import load_rgb

logger = logging.getLogger(__name__)

ProgressArg = bool | Callable[[float], None] | None


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

    def add_stats(self, sample_id: str, stats: Any) -> None:
        """Adds one sample's numeric statistics to ``extra`` (the runner calls this once per written sample)."""
        for key, value in dict(stats or {}).items():
            self.extra[key] = self.extra.get(key, 0) + value

    def __str__(self) -> str:
        return (
            f"{self.stage} -> '{self.label_field}': {self.processed} processed, {self.skipped} skipped, "
            f"{self.failed} failed in {self.seconds:.1f}s"
        )


StageResult = dict[str, Any] | Exception
ProcessFn = Callable[[list[SampleItem]], list[StageResult]]


class ImageReadFailure(Exception):
    """A picklable stand-in for an image's load error, carried back from a DataLoader worker process.

    ``kind`` is the original exception's class name, so the per-sample error reads the same whichever process
    decoded the image (exceptions with extra constructor arguments cannot be unpickled as themselves).
    """

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return type(self), (str(self), self.kind)


class _ImageFiles(Dataset):
    """Decodes images for a DataLoader; a bad file becomes an :class:`ImageReadFailure`, not a crashed worker.

    With ``as_tensor`` images travel as uint8 HxWx3 tensors (zero-copy views of the decoded arrays) so that the
    DataLoader can pin them; :func:`_as_array` turns them back into numpy views of the same (pinned) memory.
    """

    def __init__(self, filepaths: Sequence[str], as_tensor: bool = False) -> None:
        self.filepaths = list(filepaths)
        self.as_tensor = as_tensor

    def __len__(self) -> int:
        return len(self.filepaths)

    def __getitem__(self, index: int) -> np.ndarray | torch.Tensor | Exception:
        try:
            image = load_rgb(self.filepaths[index])
        except Exception as err:  # reported per sample by the runner
            in_worker = torch.utils.data.get_worker_info() is not None
            return ImageReadFailure(str(err), type(err).__name__) if in_worker else err
        if not self.as_tensor:
            return image
        with warnings.catch_warnings():  # PIL's arrays are read-only; the tensor is only read (then pinned)
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(image)


def _collate(batch: list[Any]) -> list[Any]:
    return batch


def _as_array(image: Any) -> Any:
    return image.numpy() if isinstance(image, torch.Tensor) else image


_T = TypeVar("_T")
_END = object()


def prefetched(batches: Iterable[_T], depth: int = 1) -> Iterator[_T]:
    """Yields ``batches`` while a background thread already produces the next ``depth`` ones.

    Image decoding (PIL releases the GIL) then overlaps the stage's model work when there are no DataLoader
    workers; the order of the batches is kept.
    """
    source = iter(batches)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="samseg-prefetch") as pool:
        pending = deque(pool.submit(next, source, _END) for _ in range(depth + 1))
        while True:
            batch = pending.popleft().result()
            if batch is _END:
                return
            pending.append(pool.submit(next, source, _END))
            yield batch


def image_batches(
    filepaths: Sequence[str], batch_size: int, num_workers: int = 0, pin_memory: bool | None = None
) -> Iterator[list[np.ndarray | Exception]]:
    """Yields the decoded RGB images of ``filepaths`` in batches (a file that cannot be read yields its error).

    Args:
        filepaths: image paths, in order.
        batch_size: images per batch.
        num_workers: DataLoader worker processes decoding images; 0 decodes in a background thread of this
            process, one batch ahead.
        pin_memory: decode into pinned (page-locked) host memory so host-to-GPU copies can be asynchronous;
            None pins when CUDA is available.
    """
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    loader = DataLoader(
        _ImageFiles(filepaths, as_tensor=bool(pin_memory)),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=_collate,
        shuffle=False,
        pin_memory=bool(pin_memory),
        prefetch_factor=2 if num_workers > 0 else None,
    )
    batches = (list(map(_as_array, batch)) for batch in loader)
    return batches if num_workers > 0 else prefetched(batches)


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
    kind = getattr(err, "kind", None) or type(err).__name__
    return f"{kind}: {message}" if message else kind


#: Key of a result dict that carries per-sample statistics instead of a field value (see :func:`run_stage`).
STATS = "__stats__"

ResultHook = Callable[[str, Any], None]


def run_stage(
    plan: Any,
    *,
    process: ProcessFn,
    load_images: bool = True,
    on_result: ResultHook | None = None,
    rescore_skipped: bool = False,
    pin_memory: bool | None = None,
) -> RunSummary:
    """Runs ``process`` over the samples of a validated plan in batches and writes its results in bulk.

    The plan (:class:`samseg_core.stages.plan.StagePlan`) names the samples, the inputs to read, the outputs
    (primary first), the run options and what ``skip_existing`` skips; its first writes (run, typed fields,
    mask targets) happen here, right before the first batch.

    Args:
        plan: the stage's :class:`~samseg_core.stages.plan.StagePlan`.
        process: maps a batch of :class:`SampleItem` to one result per item: a dict ``{field: value}`` (a value
            of ``None`` clears the field; the key :data:`STATS` carries that sample's statistics) or the
            exception that sample raised.
        load_images: whether to decode each sample's image (RGB uint8) in a DataLoader.
        on_result: called as ``on_result(sample_id, stats)`` once per sample whose result was written (or,
            with ``rescore_skipped``, computed), so totals never count a sample twice when a batch is retried.
            Without it, numeric stats are summed into ``summary.extra``.
        rescore_skipped: process the samples ``skip_existing`` skips too, without writing their results (QA
            stages: a resumed run's totals still cover every sample).
        pin_memory: decode images into pinned host memory (None: when CUDA is available).

    Returns:
        a :class:`RunSummary`.
    """
    started = time.monotonic()
    run = plan.run
    summary = RunSummary(stage=plan.stage, label_field=plan.primary)
    all_ids, all_paths = plan.samples.values(["id", "filepath"])
    skip = plan.skip_ids
    todo = [(sid, path) for sid, path in zip(all_ids, all_paths) if rescore_skipped or sid not in skip]
    summary.skipped = sum(sid in skip for sid in all_ids)
    report = _progress_reporter(run.progress, len(todo), plan.stage)
    collect = on_result or summary.add_stats
    plan.prepare()
    if plan.stale_runs:
        summary.extra["stale_runs"] = ", ".join(plan.stale_runs)
    output_fields = [out.name for out in plan.outputs]
    summary.extra["fields_written"] = ", ".join(output_fields)

    images: Iterator[list[Any]]
    if load_images and todo:
        images = image_batches([path for _, path in todo], run.batch_size, run.num_workers, pin_memory)
    else:
        images = iter([[None] * len(chunk) for chunk in _chunks(todo, run.batch_size)])

    done = 0
    try:
        for chunk, batch_images in zip(_chunks(todo, run.batch_size), images):
            ids = [sid for sid, _ in chunk]
            inputs = _read_inputs(plan.samples, ids, plan.inputs)
            results = _process_batch(process, chunk, batch_images, inputs, plan.inputs)
            stats = {sid: r.pop(STATS) for sid, r in zip(ids, results) if isinstance(r, dict) and STATS in r}
            writes, errors = _collect_writes(ids, results, output_fields, run.skip_failures, skip)
            _write_batch(plan, writes, errors, run.skip_failures)
            for sid in ids:
                if sid in stats and not errors.get(sid):
                    collect(sid, stats[sid])
            failed = {sid: msg for sid, msg in errors.items() if msg and sid not in skip}
            summary.errors.update(failed)
            summary.failed += len(failed)
            summary.processed += sum(sid not in skip for sid in ids) - len(failed)
            done += len(chunk)
            report(done)
    finally:
        close = getattr(images, "close", None)
        if close is not None:
            close()  # stops the prefetch thread when a batch raised

    summary.seconds = time.monotonic() - started
    return summary


def _process_batch(
    process: ProcessFn,
    chunk: Sequence[tuple[str, str]],
    batch_images: Sequence[Any],
    inputs: dict[str, dict[str, Any]],
    input_fields: Sequence[str],
) -> list[StageResult]:
    """Returns one result per sample of ``chunk``: its image's load error, or what ``process`` made of it."""
    results: list[StageResult] = [RuntimeError("not processed")] * len(chunk)
    items: list[tuple[int, SampleItem]] = []
    for i, ((sid, path), image) in enumerate(zip(chunk, batch_images)):
        if isinstance(image, Exception):
            results[i] = image
        else:
            items.append((i, SampleItem(sid, path, image, {f: inputs[f][sid] for f in input_fields})))
    if items:
        for (i, _), result in zip(items, process_with_fallback(process, [item for _, item in items])):
            results[i] = result
    return results


def _collect_writes(
    ids: Sequence[str],
    results: Sequence[StageResult],
    output_fields: Sequence[str],
    skip_failures: bool,
    unwritten: set[str] = frozenset(),
) -> tuple[dict[str, dict[str, Any]], dict[str, str | None]]:
    """Returns ``{field: {id: value}}`` to write and ``{id: error or None}``; raises a failure without
    ``skip_failures``. Samples in ``unwritten`` (rescored, not reprocessed) get neither values nor errors."""
    writes: dict[str, dict[str, Any]] = {name: {} for name in output_fields}
    errors: dict[str, str | None] = {}
    for sid, result in zip(ids, results):
        if sid in unwritten:
            continue
        if isinstance(result, Exception):
            if not skip_failures:
                raise result
            errors[sid] = describe_error(result)
            logger.debug("sample %s failed:\n%s", sid, "".join(traceback.format_exception(result)))
            continue
        errors[sid] = None
        for name, value in result.items():
            if name not in writes:
                raise RuntimeError(
                    f"the stage returned '{name}', which is not one of its outputs {output_fields}"
                )
            writes[name][sid] = value
    return writes, errors


def _write_batch(
    plan: Any, writes: dict[str, dict[str, Any]], errors: dict[str, str | None], skip_failures: bool = True
) -> None:
    """Writes one batch in bulk, the primary field last; the error field (created with the first error)
    records each processed sample's error, or None.

    A sample whose value cannot be written (e.g. a mask over MongoDB's 16 MB document limit) gets that error in
    ``errors`` and no primary value, so the others of the batch are still written.
    """
    dataset, primary, error_field = plan.dataset, plan.primary, plan.error_field
    for name, values in writes.items():
        if name != primary and values:
            _write_field(dataset, name, values, errors, skip_failures)
    primary_values = {sid: value for sid, value in writes[primary].items() if not errors.get(sid)}
    processed = {sid: err for sid, err in errors.items() if sid in writes[primary] or err}
    if any(processed.values()):
        plan.declare_error_field()
    if processed and dataset.get_field(error_field) is not None:
        dataset.set_values(error_field, processed, key_field="id")
    # last: a run killed before this write leaves the batch unprocessed in skip_existing's eyes
    if primary_values:
        failed_before = {sid for sid, err in errors.items() if err}
        _write_field(dataset, primary, primary_values, errors, skip_failures)
        late = {sid: errors[sid] for sid, err in errors.items() if err and sid not in failed_before}
        if late:
            plan.declare_error_field()
            dataset.set_values(error_field, late, key_field="id")


class ResultWriteError(ValueError):
    """A sample's result could not be stored in the database (the message says why and what to do)."""


def _write_field(
    dataset: Any, name: str, values: dict[str, Any], errors: dict[str, str | None], skip_failures: bool
) -> None:
    """Writes ``{id: value}`` in bulk; if that fails, writes one by one and records each failing sample's error."""
    try:
        dataset.set_values(name, values, key_field="id")
        return
    except Exception as err:
        if not skip_failures or isinstance(err, ConnectionFailure):
            raise  # a lost database is no sample's fault
        logger.warning(
            "bulk write of '%s' failed (%s); writing its %d samples one by one", name, err, len(values)
        )
    for sid, value in values.items():
        try:
            dataset.set_values(name, {sid: value}, key_field="id")
        except Exception as err:
            errors[sid] = describe_error(_explain_write_error(name, err))


def _explain_write_error(name: str, err: Exception) -> Exception:
    message = str(err)
    if (
        "BSONObj size" in message
        or "DocumentTooLarge" in type(err).__name__
        or "too large" in message.lower()
    ):
        return ResultWriteError(
            f"'{name}' is too large for one database document (MongoDB's 16 MB limit); store masks as files "
            f"with mask_dir= (cause: {message.splitlines()[0][:200]})"
        )
    return ResultWriteError(f"cannot write '{name}': {type(err).__name__}: {message.splitlines()[0][:300]}")


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
