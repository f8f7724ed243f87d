"""A real Label Studio server for tests: start it on 127.0.0.1, enable API tokens, annotate tasks as a person would.

The server runs from its own virtual environment (``scripts/install_label_studio.sh`` installs it under
samseg's cache); :func:`label_studio_executable` finds it. :class:`LabelStudioServer` starts it on a free port
with a data directory of its own, an admin user and a legacy API token (the ``Authorization: Token ...`` that
``label_studio_sdk.Client``, hence FiftyOne's backend, sends; Label Studio 1.23 disables such tokens by
default, so :meth:`LabelStudioServer.start` logs in and turns them on). Annotations are posted through the same
REST API Label Studio's editor uses, with brush masks in its RLE format. Imports no fiftyone.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

from samseg_core.testing.mongod import free_port

LABEL_STUDIO_VERSION = "1.23.2"


def label_studio_executable() -> Path:
    """The ``label-studio`` executable that ``scripts/install_label_studio.sh`` installs (it may not exist)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    venv = (
        os.environ.get("SAMSEG_LABEL_STUDIO_VENV")
        or cache / "samseg" / f"label-studio-{LABEL_STUDIO_VERSION}"
    )
    return Path(venv) / "bin" / "label-studio"


class LabelStudioServer:
    """A Label Studio server on 127.0.0.1 with one admin user; use as a context manager.

    Args:
        executable: the ``label-studio`` executable.
        data_dir: its database, uploads and logs (created; never the user's ``~/.local/share/label-studio``).
        start_timeout: seconds to wait for the server to answer (it takes ~40 s on 2 CPUs).
    """

    def __init__(
        self, executable: str | os.PathLike, data_dir: str | os.PathLike, start_timeout: float = 240.0
    ):
        self.executable = Path(executable)
        self.data_dir = Path(data_dir)
        self.start_timeout = start_timeout
        self.port = free_port()
        self.email = "admin@example.com"
        self.password = secrets.token_hex(8)
        self.token = secrets.token_hex(20)
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """The server's base URL."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        """The server's stdout and stderr."""
        return self.data_dir / "server.log"

    def start(self) -> LabelStudioServer:
        """Starts the server, waits until it answers, and enables legacy API tokens."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "LABEL_STUDIO_BASE_DATA_DIR": str(self.data_dir),
            "LATEST_VERSION_CHECK": "false",
            "COLLECT_ANALYTICS": "false",
        }
        command = [
            str(self.executable), "start", "--no-browser", "--internal-host", "127.0.0.1", "-p", str(self.port),
            "--data-dir", str(self.data_dir), "--username", self.email, "--password", self.password,
            "--user-token", self.token,
        ]  # fmt: skip
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            self._wait_until_up()
            enable_legacy_tokens(self.url, self.email, self.password)
        except BaseException:
            self.stop()  # __exit__ does not run when __enter__ raises
            raise
        return self

    def _wait_until_up(self) -> None:
        import requests

        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"label-studio exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if requests.get(f"{self.url}/health", timeout=5).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(1.0)
        raise TimeoutError(
            f"label-studio not answering at {self.url} after {self.start_timeout}s:\n{self.log_tail()}"
        )

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the server's log."""
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def stop(self) -> None:
        """Stops the server (SIGTERM, then SIGKILL after 20 s)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=20)

    def __enter__(self) -> LabelStudioServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def enable_legacy_tokens(url: str, email: str, password: str) -> None:
    """Logs in as ``email`` and turns on the organisation's legacy API tokens (``Authorization: Token``),
    which Label Studio 1.23 disables by default and ``label_studio_sdk.Client`` needs."""
    import requests

    with requests.Session() as session:
        session.get(f"{url}/user/login/", timeout=30).raise_for_status()
        csrf = session.cookies["csrftoken"]
        login = {"email": email, "password": password, "csrfmiddlewaretoken": csrf}
        response = session.post(
            f"{url}/user/login/", data=login, headers={"Referer": f"{url}/user/login/"}, allow_redirects=False
        )
        if response.status_code != 302:
            raise RuntimeError(f"Label Studio login as {email} failed ({response.status_code})")
        settings = {"legacy_api_tokens_enabled": True, "api_tokens_enabled": True}
        headers = {"X-CSRFToken": session.cookies["csrftoken"], "Referer": url}
        session.post(f"{url}/api/jwt/settings", json=settings, headers=headers, timeout=30).raise_for_status()


def api(url: str, token: str, method: str, path: str, **kwargs: Any) -> Any:
    """One Label Studio REST call with a legacy token; returns the decoded JSON (None when empty)."""
    import requests

    response = requests.request(
        method, f"{url}{path}", headers={"Authorization": f"Token {token}"}, timeout=60, **kwargs
    )
    if not response.ok:
        raise RuntimeError(f"{method} {path}: {response.status_code} {response.text[:500]}")
    return response.json() if response.content else None


def project_tasks(url: str, token: str, project_id: int) -> list[dict[str, Any]]:
    """All tasks of a project, with their annotations and predictions."""
    tasks = api(
        url, token, "GET", "/api/tasks", params={"project": project_id, "page_size": 1000, "fields": "all"}
    )
    return tasks["tasks"] if isinstance(tasks, dict) else tasks


def brush_result(mask: np.ndarray, label: str, from_name: str, to_name: str = "image") -> dict[str, Any]:
    """A ``brushlabels`` result as Label Studio's editor saves it: the painted pixels (``mask`` true) in its
    RLE of an RGBA image (255 in every channel where painted; the alpha channel is what is read back)."""
    from label_studio_sdk.converter import brush

    height, width = mask.shape
    return {
        "id": secrets.token_hex(5),
        "type": "brushlabels",
        "from_name": from_name,
        "to_name": to_name,
        "original_width": int(width),
        "original_height": int(height),
        "image_rotation": 0,
        "value": {
            "format": "rle",
            "rle": brush.mask2rle(np.where(mask, 255, 0).astype(np.uint8)),
            "brushlabels": [label],
        },
    }


def semantic_brushes(
    semantic: np.ndarray, class_names: dict[int, str], from_name: str, to_name: str = "image"
) -> list[dict[str, Any]]:
    """One brush per class present in a semantic map (background, value 0, is left unpainted)."""
    return [
        brush_result(semantic == value, class_names[int(value)], from_name, to_name)
        for value in np.unique(semantic)
        if value != 0
    ]


def submit_annotation(url: str, token: str, task_id: int, result: list[dict[str, Any]]) -> dict[str, Any]:
    """Submits an annotation of a task, as the editor's Submit button does."""
    body = {"result": result, "was_cancelled": False, "ground_truth": False, "lead_time": 12.5}
    return api(url, token, "POST", f"/api/tasks/{task_id}/annotations/", json=body)
