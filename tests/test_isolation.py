"""The demo and the test suite each run on a database they started, never on another process's FiftyOne database.

FiftyOne's bundled database service attaches a new process to a service already running on the machine
(a user's App), whatever ``FIFTYONE_DATABASE_DIR`` says. Here a foreign FiftyOne process starts that service
first, holding a dataset of its own; then the demo and a test session run beside it, and the foreign database
must be exactly as it was.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
MARKER = "foreign-user-dataset"
FOREIGN = textwrap.dedent(
    f"""
    import sys, time
    import fiftyone as fo
    import fiftyone.core.odm.database as fodb

    fo.Dataset("{MARKER}", persistent=True).add_sample(fo.Sample(filepath="/tmp/x.png"))
    fodb.get_db_conn()
    print("port", fodb._client.address[1], flush=True)
    sys.stdin.read()  # hold the service until the test closes stdin
    """
)


def _clean_env(tmp_path: Path, name: str) -> dict[str, str]:
    """This environment without any database setting, with FiftyOne's files under ``tmp_path/name``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FIFTYONE_DATABASE", "FIFTYONE_PRIVATE"))}
    env.pop("SAMSEG_TEST_SESSION", None)
    env["FIFTYONE_DATABASE_VALIDATION"] = "false"
    env["FIFTYONE_DATABASE_DIR"] = str(tmp_path / name / "db")
    env["FIFTYONE_CONFIG_DIR"] = str(tmp_path / name / "config")
    env["PYTHONPATH"] = str(REPO_ROOT)
    return env


@pytest.fixture
def foreign_service(tmp_path):
    """A foreign FiftyOne process that started the bundled database service, with one dataset in it."""
    process = subprocess.Popen(
        [sys.executable, "-c", FOREIGN],
        env=_clean_env(tmp_path, "foreign"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    line = process.stdout.readline()
    if not line.startswith("port"):
        process.kill()
        pytest.fail(f"the foreign FiftyOne service did not start: {line!r}")
    yield int(line.split()[1])
    process.stdin.close()
    process.wait(timeout=60)


def _foreign_datasets(port: int) -> dict[str, int]:
    import pymongo

    client = pymongo.MongoClient(f"mongodb://127.0.0.1:{port}", serverSelectionTimeoutMS=5000)
    try:
        datasets = client["fiftyone"]["datasets"].find({}, {"name": 1, "sample_collection_name": 1})
        return {
            d["name"]: client["fiftyone"][d["sample_collection_name"]].count_documents({}) for d in datasets
        }
    finally:
        client.close()


def test_the_demo_runs_on_its_own_database_beside_a_foreign_service(foreign_service, tmp_path):
    before = _foreign_datasets(foreign_service)
    assert before == {MARKER: 1}
    demo = [sys.executable, "scripts/demo.py", "--offline", "--images", "2"]
    demo += ["--db-dir", str(tmp_path / "demo-db"), "--image-dir", str(tmp_path / "images")]

    result = subprocess.run(
        demo, cwd=REPO_ROOT, env=_clean_env(tmp_path, "demo"), capture_output=True, text=True, timeout=600
    )

    assert result.returncode == 0, result.stderr[-3000:]
    assert "the demo's own" in result.stdout and "samseg-demo" in result.stdout
    assert _foreign_datasets(foreign_service) == before  # nothing added, nothing deleted
    assert (tmp_path / "demo-db").is_dir() and any((tmp_path / "demo-db").iterdir())


def test_a_test_session_runs_on_its_own_database_beside_a_foreign_service(foreign_service, tmp_path):
    env = _clean_env(tmp_path, "session")
    env["SAMSEG_FOREIGN_PORT"] = str(foreign_service)
    probe = "tests/test_isolation.py::test_probe_sees_only_its_own_database"

    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", probe],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip

    assert result.returncode == 0 and "1 passed" in result.stdout, result.stdout[-3000:]
    assert _foreign_datasets(foreign_service) == {MARKER: 1}


@pytest.mark.skipif(
    "SAMSEG_FOREIGN_PORT" not in os.environ, reason="run by the test above, beside a foreign service"
)
def test_probe_sees_only_its_own_database():
    import fiftyone as fo
    import fiftyone.core.odm.database as fodb

    fodb.get_db_conn()
    assert fodb._client.address[1] != int(os.environ["SAMSEG_FOREIGN_PORT"])
    assert MARKER not in fo.list_datasets()
    fo.Dataset("probe-dataset").delete()  # writes and deletes land in this session's database only
