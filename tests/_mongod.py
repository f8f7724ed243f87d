"""Test helpers for multi-process scenarios: subprocess environments on this session's database.

The server itself is :class:`samseg_core.testing.mongod.StandaloneMongod` (re-exported here).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from samseg_core.testing.mongod import StandaloneMongod, find_mongod, free_port  # noqa: F401  (re-exported)

REPO_ROOT = Path(__file__).resolve().parents[1]
TESTS_DIR = Path(__file__).resolve().parent


def current_database_uri() -> str:
    """Returns a URI of the database this test process's FiftyOne uses (connecting first if needed)."""
    import fiftyone as fo
    import fiftyone.core.odm.database as fodb

    if fo.config.database_uri:
        return fo.config.database_uri
    fodb.get_db_conn()
    port = os.environ.get("FIFTYONE_PRIVATE_DATABASE_PORT")
    if not port:
        raise RuntimeError("FiftyOne's database service has no known port")
    return f"mongodb://127.0.0.1:{port}"


def subprocess_env(database_uri: str, **extra: str) -> dict[str, str]:
    """Returns this process's environment pointed at ``database_uri``, with the repo and tests importable."""
    env = dict(os.environ)
    env.pop("FIFTYONE_PRIVATE_DATABASE_PORT", None)  # would override the URI's port
    env["FIFTYONE_DATABASE_URI"] = database_uri
    env["FIFTYONE_DATABASE_VALIDATION"] = "false"
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_ROOT), str(TESTS_DIR), env.get("PYTHONPATH", "")) if p
    )
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def run_python(
    code: str, env: dict[str, str], *, args: list[str] = (), timeout: float = 120
) -> subprocess.CompletedProcess:
    """Runs ``python -c code *args`` with ``env``; raises with its output when it fails."""
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO_ROOT,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"subprocess failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
        )
    return done
