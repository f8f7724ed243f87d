"""Test isolation: FiftyOne gets its own database, config, model zoo and plugins dir (with this repo as the
plugin), and no network. These variables must be set before anything imports fiftyone.

The database is a private ``mongod`` this session starts on a free port (``FIFTYONE_DATABASE_URI``): FiftyOne's
bundled service would attach to any service already running on this machine (a user's App, another test
session), whatever ``FIFTYONE_DATABASE_DIR`` says."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if os.environ.get("SAMSEG_TEST_SESSION") == str(os.getpid()):
    # imported a second time under another module name: a second database would split the session in two
    raise ImportError("tests/conftest.py must not be imported by tests; use Path(__file__) for paths")
os.environ["SAMSEG_TEST_SESSION"] = str(os.getpid())
_SANDBOX = Path(tempfile.mkdtemp(prefix="samseg-tests-"))
_PLUGINS = _SANDBOX / "plugins"
_PLUGINS.mkdir()
(_PLUGINS / "samseg").symlink_to(REPO_ROOT, target_is_directory=True)

os.environ.setdefault("FIFTYONE_DATABASE_DIR", str(_SANDBOX / "db"))
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from _mongod import StandaloneMongod  # noqa: E402

_DATABASE = StandaloneMongod().start()
os.environ["FIFTYONE_DATABASE_URI"] = _DATABASE.uri
os.environ.pop("FIFTYONE_PRIVATE_DATABASE_PORT", None)
os.environ["FIFTYONE_CONFIG_DIR"] = str(_SANDBOX / "config")
os.environ["FIFTYONE_PLUGINS_DIR"] = str(_PLUGINS)
os.environ["FIFTYONE_MODEL_ZOO_DIR"] = str(_SANDBOX / "zoo")
os.environ["FIFTYONE_DO_NOT_TRACK"] = "true"
os.environ["FIFTYONE_DATABASE_VALIDATION"] = "false"
os.environ["FIFTYONE_SHOW_PROGRESS_BARS"] = "false"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["SAMSEG_CACHE_DIR"] = str(_SANDBOX / "cache")
os.environ.pop("SAMSEG_SAM_CHECKPOINT", None)
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


@atexit.register
def _remove_sandbox() -> None:
    _DATABASE.stop()
    shutil.rmtree(_SANDBOX, ignore_errors=True)


@pytest.fixture
def dataset():
    """An empty, uniquely named FiftyOne dataset on the test database, deleted afterwards."""
    import fiftyone as fo

    ds = fo.Dataset()
    yield ds
    if fo.dataset_exists(ds.name):
        ds.delete()


@pytest.fixture
def scenes():
    """4 deterministic synthetic scenes (ground truth semantic maps and instances)."""
    from samseg_core.testing import make_scenes

    return make_scenes(4, seed=0)


@pytest.fixture
def scene_dataset(dataset, scenes, tmp_path):
    """A dataset of the ``scenes`` with ``ground_truth`` and a degraded ``coarse`` prediction."""
    import fiftyone as fo

    from samseg_core.mask_targets import merge_mask_targets
    from samseg_core.testing import degrade_prediction, write_scene_images

    paths = write_scene_images(scenes, tmp_path / "images")
    samples = []
    for i, (scene, path) in enumerate(zip(scenes, paths)):
        samples.append(
            fo.Sample(
                filepath=str(path),
                ground_truth=fo.Segmentation(mask=scene.semantic.astype("uint8")),
                coarse=fo.Segmentation(mask=degrade_prediction(scene, seed=i).astype("uint8")),
            )
        )
    dataset.add_samples(samples)
    merge_mask_targets(dataset, "ground_truth", scenes[0].class_names)
    merge_mask_targets(dataset, "coarse", scenes[0].class_names)
    return dataset
