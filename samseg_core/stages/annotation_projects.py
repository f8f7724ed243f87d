"""Label Studio projects a relabel queue's upload created: named for the queue's run, removed when it fails.

FiftyOne's Label Studio backend creates the project before it uploads the tasks, so an upload that fails
half-way (a task rejected, the server gone) leaves an empty project on the user's server. samseg names the
project ``samseg_<dataset>_<anno_key>`` (unless the user names it), notes which projects existed before the
upload, and on failure deletes only projects created since whose title is that name (FiftyOne appends
``_<timestamp>`` when the name is taken). Titles are kept short enough for Label Studio's 50-character limit
(FiftyOne's own default, ``FiftyOne_<dataset>``, is refused for dataset names over 41 characters).
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

LABEL_STUDIO = "labelstudio"


#: Label Studio refuses project titles over 50 characters; FiftyOne may append ``_<10-digit timestamp>``.
MAX_TITLE = 50 - 11


def project_name(dataset_name: str, anno_key: str) -> str:
    """The Label Studio project title samseg gives annotation run ``anno_key`` of dataset ``dataset_name``:
    ``samseg_<dataset>_<anno_key>``, or, when longer than :data:`MAX_TITLE`, its start and a hash of it."""
    name = f"samseg_{dataset_name}_{anno_key}".replace(" ", "_")
    if len(name) <= MAX_TITLE:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    return f"{name[: MAX_TITLE - 9]}_{digest}"


def _client(annotate_kwargs: dict[str, Any]) -> Any:
    """A Label Studio client for the server ``annotate()`` would use (its kwargs, else FiftyOne's config)."""
    import fiftyone as fo
    from label_studio_sdk import Client

    config = fo.annotation_config.backends.get(LABEL_STUDIO, {})
    url = annotate_kwargs.get("url") or config.get("url")
    api_key = annotate_kwargs.get("api_key") or config.get("api_key")
    return Client(url, api_key)


def existing_projects(annotate_kwargs: dict[str, Any]) -> set[int] | None:
    """The ids of the server's projects now; None when the server cannot be asked (the upload will fail before
    it creates anything)."""
    try:
        return {project.get_params()["id"] for project in _client(annotate_kwargs).list_projects()}
    except Exception:
        return None


def delete_new_projects(annotate_kwargs: dict[str, Any], before: set[int] | None, title: str) -> list[int]:
    """Deletes the projects titled ``title`` (or ``title_<timestamp>``) created since ``before``; returns
    their ids. Never raises: the upload's own error is the one to report."""
    if before is None:
        return []
    named = re.compile(rf"{re.escape(title)}(_\d+)?")
    try:
        client = _client(annotate_kwargs)
        new = [
            project.get_params()["id"]
            for project in client.list_projects()
            if project.get_params()["id"] not in before and named.fullmatch(project.get_params()["title"])
        ]
        for project_id in new:
            client.delete_project(project_id)
        return new
    except Exception:
        return []
