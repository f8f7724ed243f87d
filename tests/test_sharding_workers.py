"""Many workers on one MongoDB: a standalone mongod, 8 queued shards of the baseline, two worker processes.

Everything that touches the shared database runs in subprocesses pointed at it by ``FIFTYONE_DATABASE_URI``
(this test process's FiftyOne is bound to the conftest database); the test polls the queue with pymongo.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _mongod import StandaloneMongod, run_python, subprocess_env
from _recording import image_digest, read_call_log

NUM_SAMPLES = 20
NUM_SHARDS = 8

SETUP = """
import json, sys
import fiftyone as fo
import fiftyone.operators as foo
from samseg_core.testing import make_scenes, write_scene_images

out_dir, name = sys.argv[1], sys.argv[2]
paths = write_scene_images(make_scenes({n}, seed=0, size=(96, 96)), out_dir)
ds = fo.Dataset(name, persistent=True)
ds.add_samples([fo.Sample(filepath=str(p)) for p in paths])
queued = foo.get_operator("@samseg/samseg/shard_run")(
    ds, stage="run_baseline", num_shards={k}, model="_recording:recording_segmenter",
    label_field="baseline", batch_size=2, device="cpu",
)
print(json.dumps(queued))
"""

VERIFY = """
import json, sys
import fiftyone as fo
from samseg_core.labels import read_segmentation
from samseg_core.images import load_rgb
sys.path.insert(0, sys.argv[3])
from operators.sharding import shard_results

ds = fo.load_dataset(sys.argv[1])
op_ids = json.loads(sys.argv[2])
report = shard_results(op_ids)
shapes_ok = all(
    read_segmentation(label).shape == load_rgb(path).shape[:2]
    for label, path in zip(*ds.values(["baseline", "filepath"]))
)
field = ds.get_field("baseline")
print(json.dumps({
    "report": report,
    "labelled": len(ds.exists("baseline")),
    "size": len(ds),
    "schema": None if field is None else field.document_type.__name__,
    "shapes_ok": shapes_ok,
    "shard_params": [fo.operators.delegated.DelegatedOperationService().get(__import__("bson").ObjectId(i))
                     .context.request_params["params"]["shard_index"] for i in op_ids],
}))
ds.delete()
"""


def _launch_worker(env: dict[str, str], log_path: Path) -> subprocess.Popen:
    fiftyone_cli = Path(sys.executable).with_name("fiftyone")
    log = open(log_path, "w")  # noqa: SIM115 - the worker owns it until it is stopped
    return subprocess.Popen(
        [str(fiftyone_cli), "delegated", "launch"], env=env, stdout=log, stderr=subprocess.STDOUT, text=True
    )


def _wait_for_queue(uri: str, op_ids: list[str], timeout: float) -> dict[str, str]:
    import pymongo
    from bson import ObjectId

    client = pymongo.MongoClient(uri)
    ops = client["fiftyone"]["delegated_ops"]
    deadline = time.monotonic() + timeout
    try:
        while True:
            states = {
                str(d["_id"]): d["run_state"]
                for d in ops.find({"_id": {"$in": [ObjectId(i) for i in op_ids]}})
            }
            if len(states) == len(op_ids) and all(s in ("completed", "failed") for s in states.values()):
                return states
            if time.monotonic() > deadline:
                return states
            time.sleep(0.5)
    finally:
        client.close()


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)  # the launch loop exits on KeyboardInterrupt
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.mark.slow
def test_two_workers_process_eight_shards_exactly_once(tmp_path):
    call_log = tmp_path / "calls.log"
    name = f"samseg-shards-{os.getpid()}"
    with StandaloneMongod() as mongod:
        env = subprocess_env(
            mongod.uri, SAMSEG_TEST_CALL_LOG=str(call_log), SAMSEG_TEST_SLEEP_PER_BATCH="0.2"
        )
        setup = SETUP.format(n=NUM_SAMPLES, k=NUM_SHARDS)
        queued = json.loads(
            run_python(setup, env, args=[str(tmp_path / "images"), name]).stdout.splitlines()[-1]
        )
        op_ids = queued["operation_ids"]
        assert len(op_ids) == NUM_SHARDS

        workers = [_launch_worker(env, tmp_path / f"worker{i}.log") for i in range(2)]
        try:
            states = _wait_for_queue(mongod.uri, op_ids, timeout=75)
        finally:
            for worker in workers:
                _stop(worker)
        logs = "\n".join((tmp_path / f"worker{i}.log").read_text()[-1500:] for i in range(2))
        assert set(states.values()) == {"completed"}, f"{states}\n{logs}"

        from samseg_core.images import load_rgb

        repo = str(Path(__file__).resolve().parents[1])
        result = json.loads(
            run_python(VERIFY, env, args=[name, json.dumps(op_ids), repo]).stdout.splitlines()[-1]
        )

    calls = read_call_log(call_log)
    digests = [digest for _, digest in calls]
    expected = sorted(image_digest(load_rgb(p)) for p in sorted((tmp_path / "images").iterdir()))
    worker_pids = {pid for pid, _ in calls}
    total = result["report"]["total"]
    print(
        f"exactly-once: {len(digests)} model calls for {len(expected)} images, {len(set(digests))} distinct, "
        f"{len(worker_pids)} worker processes; shards processed {total['processed']} skipped {total['skipped']} "
        f"failed {total['failed']} over {total['shards']} shards"
    )
    assert sorted(digests) == expected  # every image segmented once, none twice
    assert len(worker_pids) == 2  # both workers took shards from the queue
    assert total["processed"] == NUM_SAMPLES and total["failed"] == 0 and total["shards"] == NUM_SHARDS
    assert result["labelled"] == result["size"] == NUM_SAMPLES
    assert result["schema"] == "Segmentation" and result["shapes_ok"]
    assert sorted(result["shard_params"]) == list(range(NUM_SHARDS))


@pytest.fixture
def numbered(dataset):
    import fiftyone as fo

    dataset.add_samples([fo.Sample(filepath=f"/images/{i}.png", index=i) for i in range(11)])
    return dataset


def test_shards_are_disjoint_and_cover_the_view(numbered):
    from samseg_core.sharding import shard_views

    view = numbered.match({"index": {"$ne": 4}})
    shards = [sorted(s.values("index")) for s in shard_views(view, 4)]
    assert sorted(sum(shards, [])) == sorted(view.values("index"))
    assert [len(s) for s in shards] == [2, 3, 2, 3]


def test_shard_view_is_deterministic(numbered):
    from samseg_core.sharding import shard_view

    assert shard_view(numbered, 3, 1).values("id") == shard_view(numbered, 3, 1).values("id")


def test_samples_added_later_land_in_exactly_one_shard(dataset):
    import fiftyone as fo

    from samseg_core.sharding import shard_views

    shards = shard_views(dataset, 3)  # bounds computed on an empty dataset
    dataset.add_samples([fo.Sample(filepath=f"/late/{i}.png") for i in range(5)])
    assert sorted(sum((s.values("id") for s in shards), [])) == sorted(dataset.values("id"))


def test_shard_run_queues_stage_operations_that_a_worker_completes(dataset, tmp_path):
    import fiftyone as fo
    import fiftyone.operators as foo
    from fiftyone.operators.delegated import DelegatedOperationService

    from samseg_core.testing import make_scenes, save_tiny_segformer, write_scene_images
    from samseg_core.testing.scenes import class_names_for

    paths = write_scene_images(make_scenes(5, seed=1, size=(96, 96)), tmp_path / "images")
    dataset.add_samples([fo.Sample(filepath=str(p)) for p in paths])
    model = str(save_tiny_segformer(tmp_path / "segformer", class_names_for(6)))
    queued = foo.get_operator("@samseg/samseg/shard_run")(
        dataset, stage="run_baseline", num_shards=3, model=model, label_field="baseline", device="cpu"
    )
    assert len(queued["operation_ids"]) == 3
    service = DelegatedOperationService()
    results = service.execute_queued_operations(dataset_name=dataset.name)
    assert all(r.error is None for r in results), [r.error for r in results]
    assert sorted(r.result["processed"] for r in results) == [1, 2, 2]
    assert len(dataset.exists("baseline")) == 5

    import operators.sharding as sharding  # the repo root is on sys.path (conftest)

    report = sharding.shard_results(queued["operation_ids"])
    assert report["done"] and report["total"]["processed"] == 5 and report["total"]["shards"] == 3


def test_shard_run_form_includes_the_stages_own_inputs(dataset):
    import fiftyone.operators as foo
    from fiftyone.operators.executor import ExecutionContext

    ctx = ExecutionContext(request_params={"dataset_name": dataset.name, "params": {"stage": "run_baseline"}})
    form = foo.get_operator("@samseg/samseg/shard_run").resolve_input(ctx).type
    assert {"stage", "num_shards", "model", "label_field", "batch_size"} <= set(form.properties)
