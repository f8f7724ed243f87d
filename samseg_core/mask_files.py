"""Segmentation masks stored as PNG files: ``<mask_dir>/<field>/<sample id>.png``, written atomically.

One subdirectory per output field keeps two stages that share a ``mask_dir`` from overwriting each other's
files. A marker file (``.samseg.json``) records which dataset and field created the directory, so a resumed
run may replace its own leftovers while a user's files of the same name are refused without ``overwrite``.
Temporary files get unique names, so two writers of one sample's mask never race on a shared temporary path.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

MARKER = ".samseg.json"


def field_mask_dir(mask_dir: str | os.PathLike, field: str) -> Path:
    """The directory holding ``field``'s masks."""
    return Path(os.fspath(mask_dir)).expanduser().absolute() / field


def mask_file(mask_dir: str | os.PathLike, field: str, sample_id: str) -> Path:
    """The PNG path of one sample's mask of ``field``."""
    return field_mask_dir(mask_dir, field) / f"{sample_id}.png"


def write_png(path: str | os.PathLike, array: np.ndarray) -> str:
    """Writes ``array`` as a PNG at ``path`` atomically (unique temporary file, then rename); returns the path."""
    path = os.fspath(path)
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=".", suffix=".tmp.png", dir=directory)
    try:
        with os.fdopen(handle, "wb") as out:
            Image.fromarray(array).save(out, format="PNG")
        os.replace(tmp, path)  # atomic: a killed run never leaves a half-written PNG behind
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def _marker_of(directory: Path) -> dict | None:
    try:
        return json.loads((directory / MARKER).read_text())
    except (OSError, ValueError):
        return None


def owns_directory(directory: Path, dataset_id: str, field: str) -> bool:
    """Whether samseg created ``directory`` for ``field`` of the dataset with ``dataset_id``."""
    marker = _marker_of(directory)
    return bool(marker) and marker.get("dataset_id") == dataset_id and marker.get("field") == field


def claim_directory(directory: Path, dataset_id: str, field: str, stage: str) -> None:
    """Creates ``directory`` with samseg's marker (an existing marker is left as it is)."""
    directory.mkdir(parents=True, exist_ok=True)
    if _marker_of(directory) is None:
        record = {"dataset_id": dataset_id, "field": field, "stage": stage}
        write_text_atomically(directory / MARKER, json.dumps(record))


def write_text_atomically(path: Path, text: str) -> None:
    """Writes ``text`` to ``path`` through a unique temporary file in the same directory."""
    handle, tmp = tempfile.mkstemp(prefix=".", suffix=".tmp", dir=path.parent)
    with os.fdopen(handle, "w") as out:
        out.write(text)
    os.replace(tmp, path)


def existing_mask_files(directory: Path, sample_ids: Iterable[str]) -> list[str]:
    """The ids among ``sample_ids`` whose mask file already exists in ``directory``."""
    if not directory.is_dir():
        return []
    present = {entry.name[:-4] for entry in os.scandir(directory) if entry.name.endswith(".png")}
    return [sid for sid in sample_ids if sid in present]
