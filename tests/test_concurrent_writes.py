"""Two processes writing to one dataset at the same time lose nothing.

- Mask targets: a process that loaded the dataset before another process added a mask-target entry used to save
  its whole stale ``mask_targets`` dict, deleting that entry while its labels stayed (defect 6). Now each entry
  is set on its own in the database.
- Mask files: two writers of one sample's PNG used to race on a fixed temporary name (defect 9).

Both run in real subprocesses on this session's database. The first test failed on the code before the
contract (commit 5714c13); it uses argument names that code accepted too.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from _mongod import REPO_ROOT, current_database_uri, run_python, subprocess_env

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

STALE_WRITER = """
import os, sys, time, warnings
warnings.simplefilter("ignore", FutureWarning)
import fiftyone as fo
from samseg_core.stages.voting import semantic_voting
ds = fo.load_dataset(sys.argv[1])
print(dict(ds.mask_targets))  # this process now holds the targets as they were
open(sys.argv[2], "w").close()
while not os.path.exists(sys.argv[3]):
    time.sleep(0.05)
semantic_voting(ds, semantic_field="coarse", masks="slic", label_field="ssa_a", instances_field=None)
"""

OTHER_WRITER = """
import sys, warnings
warnings.simplefilter("ignore", FutureWarning)
import fiftyone as fo
from samseg_core.stages.voting import semantic_voting
semantic_voting(fo.load_dataset(sys.argv[1]), semantic_field="coarse", masks="slic", label_field="ssa_b",
                instances_field=None)
"""

PNG_WRITER = """
import os, sys, time
import numpy as np
from samseg_core.labels import segmentation_from_array
while not os.path.exists(sys.argv[4]):  # both writers start together
    time.sleep(0.01)
for i in range(int(sys.argv[3])):
    segmentation_from_array(np.full((256, 256), int(sys.argv[2]), np.uint8), mask_dir=sys.argv[1], name="same")
"""


@pytest.fixture
def persistent_scene_dataset(scene_dataset):
    scene_dataset.persistent = True
    scene_dataset.save()
    return scene_dataset


def _wait_for(path: str, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if process.poll() is not None:
            raise RuntimeError(f"writer exited early: {process.communicate()}")
        if time.monotonic() > deadline:
            raise TimeoutError(path)
        time.sleep(0.05)


def test_two_stages_at_once_keep_both_mask_target_entries(persistent_scene_dataset, tmp_path):
    ds = persistent_scene_dataset
    env = subprocess_env(current_database_uri())
    ready, go = str(tmp_path / "ready"), str(tmp_path / "go")
    stale = subprocess.Popen(
        [sys.executable, "-c", STALE_WRITER, ds.name, ready, go],
        env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        _wait_for(ready, stale)
        run_python(OTHER_WRITER, env, args=[ds.name])  # adds mask_targets["ssa_b"] meanwhile
        open(go, "w").close()
        out, err = stale.communicate(timeout=180)
        assert stale.returncode == 0, err[-3000:]
    finally:
        if stale.poll() is None:
            stale.kill()
    ds.reload()
    assert ds.count("ssa_a") == ds.count("ssa_b") == len(ds)
    assert set(ds.mask_targets) >= {"ssa_a", "ssa_b", "coarse", "ground_truth"}
    assert ds.mask_targets["ssa_b"] == ds.mask_targets["coarse"]


def test_two_processes_writing_one_samples_png_never_fail(tmp_path):
    env = subprocess_env(current_database_uri())
    masks, go = tmp_path / "masks", tmp_path / "go"
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", PNG_WRITER, str(masks), str(value), "400", str(go)],
            env=env,
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for value in (1, 2)
    ]
    time.sleep(3.0)  # both have imported samseg_core and wait
    go.touch()
    results = [(w.wait(timeout=180), w.stderr.read()) for w in writers]
    assert [code for code, _ in results] == [0, 0], [err[-2000:] for _, err in results]
    assert sorted(p.name for p in masks.iterdir()) == ["same.png"]
