"""The shared batch loop: selection, failure isolation, OOM halving, write order, image loading, progress."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from samseg_core.errors import FieldExistsError
from samseg_core.label_types import FLOAT, INT, STRING
from samseg_core.runner import (
    SampleItem,
    describe_error,
    image_batches,
    prefetched,
    process_with_fallback,
    run_stage,
)
from samseg_core.stages.options import OutputField, StageOptions
from samseg_core.stages.plan import plan_stage
from samseg_core.stages.run_options import RunOptions


def _run(samples, outputs, process, **run_options):
    """Plans a stage "t" writing ``outputs`` ({name: label type}, primary first) and runs ``process``."""
    fields = [OutputField(name, label_type, "label_field") for name, label_type in outputs.items()]
    plan = plan_stage("t", samples, StageOptions(), RunOptions(**run_options), outputs=fields)
    return run_stage(plan, process=process)


def _write_images(tmp_path, n, size=(6, 5)):
    paths = []
    for i in range(n):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(np.full((*size, 3), i * 10, np.uint8)).save(path)
        paths.append(str(path))
    return paths


@pytest.fixture
def image_dataset(dataset, tmp_path):
    import fiftyone as fo

    dataset.add_samples([fo.Sample(filepath=p) for p in _write_images(tmp_path, 5)])
    return dataset


def _mean_of(items):
    return [{"mean": float(item.image.mean())} for item in items]


def test_results_are_written_per_sample(image_dataset):
    summary = _run(image_dataset, {"mean": FLOAT}, _mean_of, batch_size=2)
    assert summary.processed == 5 and summary.failed == 0
    assert image_dataset.values("mean") == [i * 10.0 for i in range(5)]


def test_oom_halves_the_batch_and_retries():
    sizes = []

    def process(items):
        sizes.append(len(items))
        if len(items) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return [{"i": item.id} for item in items]

    items = [SampleItem(str(i), "", None) for i in range(8)]
    results = process_with_fallback(process, items)
    assert [r["i"] for r in results] == [str(i) for i in range(8)]
    assert sizes == [8, 4, 2, 2, 4, 2, 2]


def test_oom_of_a_single_sample_becomes_its_error():
    def process(items):
        raise torch.OutOfMemoryError("CUDA out of memory")

    results = process_with_fallback(process, [SampleItem("a", "", None), SampleItem("b", "", None)])
    assert all(isinstance(r, torch.OutOfMemoryError) for r in results)


def test_a_failing_sample_does_not_fail_its_batch():
    def process(items):
        if any(item.id == "bad" for item in items):
            raise ValueError("boom")
        return [{"ok": True} for _ in items]

    results = process_with_fallback(process, [SampleItem(i, "", None) for i in ("a", "bad", "c")])
    assert results[0] == {"ok": True} and results[2] == {"ok": True}
    assert isinstance(results[1], ValueError)


def test_unreadable_image_gets_a_readable_error(image_dataset, tmp_path):
    import fiftyone as fo

    (tmp_path / "broken.png").write_text("not an image")
    image_dataset.add_sample(fo.Sample(filepath=str(tmp_path / "broken.png")))
    summary = _run(image_dataset, {"mean": FLOAT}, _mean_of, batch_size=4)
    assert summary.processed == 5 and summary.failed == 1
    errors = [e for e in image_dataset.values("mean_error") if e]
    assert len(errors) == 1 and "broken.png" in errors[0] and errors[0].startswith("ImageLoadError")


def test_skip_failures_false_raises(image_dataset, tmp_path):
    import fiftyone as fo

    image_dataset.add_sample(fo.Sample(filepath=str(tmp_path / "missing.png")))
    with pytest.raises(ValueError, match="does not exist"):
        _run(image_dataset, {"mean": FLOAT}, _mean_of, skip_failures=False)


def test_existing_values_raise_without_overwrite(image_dataset):
    image_dataset.set_values("mean", [1.0] * 5)
    with pytest.raises(FieldExistsError, match="overwrite=True"):
        _run(image_dataset, {"mean": FLOAT}, _mean_of)


def test_skip_existing_processes_only_samples_without_the_primary_field(image_dataset):
    first = image_dataset.first()
    _run(image_dataset.select(first.id), {"mean": FLOAT}, lambda items: [{"mean": -1.0} for _ in items])
    seen = []

    def process(items):
        seen.extend(item.id for item in items)
        return _mean_of(items)

    summary = _run(image_dataset, {"mean": FLOAT}, process, skip_existing=True)
    assert summary.skipped == 1 and first.id not in seen and len(seen) == 4
    assert image_dataset.first()["mean"] == -1.0


def test_skip_existing_refuses_a_user_field_it_would_mix_into(image_dataset):
    image_dataset.set_values("mean", [-1.0] + [None] * 4)
    with pytest.raises(FieldExistsError, match="did not write"):
        _run(image_dataset, {"mean": FLOAT}, _mean_of, skip_existing=True)
    assert image_dataset.values("mean") == [-1.0] + [None] * 4


def test_overwrite_replaces_existing_values(image_dataset):
    image_dataset.set_values("mean", [-1.0] * 5)
    _run(image_dataset, {"mean": FLOAT}, _mean_of, overwrite=True)
    assert image_dataset.values("mean") == [i * 10.0 for i in range(5)]


def test_error_is_cleared_when_a_sample_later_succeeds(image_dataset):
    def failing(items):
        return [ValueError("first run fails") for _ in items]

    _run(image_dataset, {"mean": FLOAT}, failing)
    assert all(image_dataset.values("mean_error"))
    _run(image_dataset, {"mean": FLOAT}, _mean_of, skip_existing=True)
    assert image_dataset.values("mean_error") == [None] * 5


def test_primary_field_is_written_after_secondary_and_error_fields(image_dataset, monkeypatch, tmp_path):
    import fiftyone as fo

    image_dataset.add_sample(fo.Sample(filepath=str(tmp_path / "missing.png")))
    order = []
    original = type(image_dataset).set_values

    def recording(self, field_name, *args, **kwargs):
        order.append(field_name)
        return original(self, field_name, *args, **kwargs)

    monkeypatch.setattr(type(image_dataset), "set_values", recording)

    def process(items):
        return [{"primary": 1, "secondary": 2} for _ in items]

    _run(image_dataset, {"primary": INT, "secondary": INT}, process, batch_size=6)
    assert order == ["secondary", "primary_error", "primary"]


def test_a_result_too_large_for_the_database_becomes_that_samples_error(image_dataset):
    big = image_dataset.first().id

    def process(items):
        return [{"blob": "x" * (17 * 2**20) if item.id == big else item.id} for item in items]

    summary = _run(image_dataset, {"blob": STRING}, process, batch_size=5)
    assert summary.failed == 1 and summary.processed == 4
    assert "mask_dir" in summary.errors[big] and "16 MB" in summary.errors[big]
    ids, blobs = image_dataset.values(["id", "blob"])
    assert [b for i, b in zip(ids, blobs) if i != big] == [i for i in ids if i != big]
    assert image_dataset[big]["blob"] is None


def test_input_fields_reach_the_stage(image_dataset):
    image_dataset.set_values("hint", [f"h{i}" for i in range(5)])

    def process(items):
        return [{"echo": item.inputs["hint"] + "|"} for item in items]

    fields = [OutputField("echo", STRING, "label_field")]
    plan = plan_stage("t", image_dataset, StageOptions(), RunOptions(), outputs=fields)
    plan.inputs = ["hint"]
    run_stage(plan, process=process)
    assert image_dataset.values("echo") == [f"h{i}|" for i in range(5)]


def test_progress_callback_reaches_one(image_dataset):
    fractions = []
    _run(image_dataset, {"mean": FLOAT}, _mean_of, batch_size=2, progress=fractions.append)
    assert fractions == pytest.approx([0.4, 0.8, 1.0])


def test_worker_processes_decode_the_same_images_in_order(tmp_path):
    paths = _write_images(tmp_path, 5) + [str(tmp_path / "missing.png")]
    in_process = list(image_batches(paths, batch_size=4, num_workers=0, pin_memory=False))
    in_workers = list(image_batches(paths, batch_size=4, num_workers=2, pin_memory=False))
    assert [len(b) for b in in_workers] == [4, 2]
    for a, b in zip(sum(in_process, []), sum(in_workers, [])):
        if isinstance(a, Exception):
            assert isinstance(b, Exception) and describe_error(a) == describe_error(b)
        else:
            assert isinstance(b, np.ndarray) and b.dtype == np.uint8 and np.array_equal(a, b)


def test_prefetch_keeps_order_and_stops_at_the_end():
    assert list(prefetched(iter(range(7)), depth=2)) == list(range(7))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs CUDA")
def test_images_are_pinned_when_asked(tmp_path):
    batch = next(image_batches(_write_images(tmp_path, 2), batch_size=2, pin_memory=True))
    assert all(torch.from_numpy(image).is_pinned() for image in batch)
