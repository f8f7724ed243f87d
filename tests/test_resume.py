"""Resume: a baseline run SIGKILLed mid-way and started again with skip_existing finishes every sample once.

The run happens in a real subprocess on this test's database (``FIFTYONE_DATABASE_URI``), with a tiny SegFormer
that records each image it segments (``tests/_recording.py``) and sleeps per batch so the kill lands mid-run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from _mongod import REPO_ROOT, current_database_uri, subprocess_env
from _recording import image_digest, read_call_log

from samseg_core.images import load_rgb
from samseg_core.labels import read_segmentation

NUM_SAMPLES = 12

RUN = """
import sys
import fiftyone as fo
from samseg_core.stages.baseline import run_baseline
ds = fo.load_dataset(sys.argv[1])
summary = run_baseline(ds, model="_recording:recording_segmenter", label_field="baseline", batch_size=2,
                       device="cpu", skip_existing=True, mask_dir=sys.argv[2] or None)
print(summary)
"""


@pytest.fixture
def persistent_scenes(tmp_path):
    import fiftyone as fo

    from samseg_core.testing import make_scenes, write_scene_images

    paths = write_scene_images(make_scenes(NUM_SAMPLES, seed=3, size=(96, 112)), tmp_path / "images")
    ds = fo.Dataset(f"samseg-resume-{os.getpid()}-{time.monotonic_ns()}", persistent=True)
    ds.add_samples([fo.Sample(filepath=str(p)) for p in paths])
    yield ds
    ds.delete()


def _labelled_ids(dataset) -> set[str]:
    return {str(d["_id"]) for d in dataset._sample_collection.find({"baseline": {"$ne": None}}, {"_id": 1})}


def _start_run(dataset, mask_dir, call_log, sleep) -> subprocess.Popen:
    env = subprocess_env(
        current_database_uri(), SAMSEG_TEST_CALL_LOG=str(call_log), SAMSEG_TEST_SLEEP_PER_BATCH=str(sleep)
    )
    return subprocess.Popen(
        [sys.executable, "-c", RUN, dataset.name, str(mask_dir or "")],
        env=env,
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _kill_after_first_batch(process: subprocess.Popen, dataset, timeout: float = 90) -> set[str]:
    deadline = time.monotonic() + timeout
    while not _labelled_ids(dataset):
        if process.poll() is not None:
            raise AssertionError(f"run ended before the kill:\n{process.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("no batch was written in time")
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    return _labelled_ids(dataset)


@pytest.mark.slow
@pytest.mark.parametrize("to_png", [False, True], ids=["database-masks", "mask-dir-pngs"])
def test_sigkilled_run_resumes_without_gaps_or_repeats(persistent_scenes, tmp_path, to_png):
    dataset = persistent_scenes
    mask_dir = tmp_path / "masks" if to_png else None
    digest_of = {sid: image_digest(load_rgb(path)) for sid, path in zip(*dataset.values(["id", "filepath"]))}

    first = _start_run(dataset, mask_dir, tmp_path / "first.log", sleep=0.5)
    done_before_kill = _kill_after_first_batch(first, dataset)
    assert first.returncode == -signal.SIGKILL
    assert 0 < len(done_before_kill) < NUM_SAMPLES

    second = _start_run(dataset, mask_dir, tmp_path / "second.log", sleep=0)
    out, err = second.communicate(timeout=120)
    assert second.returncode == 0, err[-3000:]

    missing_after_kill = sorted(digest_of[sid] for sid in digest_of if sid not in done_before_kill)
    processed_after_kill = sorted(digest for _, digest in read_call_log(tmp_path / "second.log"))
    print(
        f"resume ({'mask_dir' if to_png else 'database'}): {len(done_before_kill)}/{NUM_SAMPLES} labelled when "
        f"killed, {len(processed_after_kill)} processed after the kill, {len(missing_after_kill)} were missing; "
        f"{out.strip()}"
    )
    assert processed_after_kill == missing_after_kill  # exactly the missing ones, each once

    dataset.reload()
    assert _labelled_ids(dataset) == set(digest_of)
    assert dataset.get_field("baseline_error") is None  # nothing failed
    for label, path in zip(*dataset.values(["baseline", "filepath"])):
        mask = read_segmentation(label)
        assert mask.shape == load_rgb(path).shape[:2] and mask.dtype == np.int32
        if to_png:
            assert os.path.dirname(label.mask_path) == str(mask_dir / "baseline")  # <mask_dir>/<field>/
    if to_png:
        assert not list(mask_dir.rglob("*.tmp*"))  # no half-written PNG left behind
