"""``dataset.mask_targets`` updated entry by entry in the database, never from a stale in-memory copy.

FiftyOne saves ``dataset.mask_targets`` as one dict: a process that assigns it and calls ``dataset.save()``
writes back every entry it loaded, so an entry another process added meanwhile is lost while its labels stay.
Here each class id is a separate ``$set`` of ``mask_targets.<field>.<id>`` on the dataset's document, checked
against the entries freshly read from the database; the in-memory dataset is reloaded afterwards.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from samseg_core.errors import StageParameterError


class MaskTargetConflict(StageParameterError):
    """New mask targets would rename a class id that already has another name."""


def _collection(dataset: Any) -> Any:
    import fiftyone.core.odm as foo

    return foo.get_db_conn().datasets


def stored_mask_targets(dataset: Any, field: str) -> dict[int, str]:
    """The entries of ``mask_targets[field]`` as stored in the database now (not the in-memory copy)."""
    doc = _collection(dataset).find_one({"_id": dataset._doc.id}, {f"mask_targets.{field}": 1}) or {}
    entries = (doc.get("mask_targets") or {}).get(field) or {}
    return {int(k): str(v) for k, v in entries.items() if str(k).lstrip("-").isdigit()}


def check_mask_targets(
    dataset: Any,
    field: str,
    targets: Mapping[int, str],
    *,
    overwrite: bool = False,
    param: str = "label_field",
) -> dict[int, str]:
    """Returns the entries of ``targets`` that ``mask_targets[field]`` lacks or names differently.

    Raises :class:`MaskTargetConflict` (naming ``param``) when an id already has another name, unless
    ``overwrite``. Writes nothing.
    """
    current = stored_mask_targets(dataset, field)
    changes = {int(k): str(v) for k, v in targets.items() if current.get(int(k)) != str(v)}
    renamed = {k: (current[k], v) for k, v in changes.items() if k in current}
    if renamed and not overwrite:
        detail = ", ".join(f"{k}: '{old}' -> '{new}'" for k, (old, new) in sorted(renamed.items())[:5])
        raise MaskTargetConflict(
            param,
            f"mask_targets['{field}'] already names these ids differently ({detail})",
            "choose another output field, or pass overwrite=True to rename them",
        )
    return changes


def set_mask_targets(dataset: Any, field: str, entries: Mapping[int, str]) -> None:
    """Sets ``mask_targets[field][id] = name`` for each entry, one key each; other entries are untouched."""
    if not entries:
        return
    if "." in field or field.startswith("$"):
        raise ValueError(f"cannot store mask targets for a field named '{field}'")
    update = {f"mask_targets.{field}.{int(k)}": str(v) for k, v in entries.items()}
    _collection(dataset).update_one({"_id": dataset._doc.id}, {"$set": update})
    dataset.reload()


def claim_class_ids(dataset: Any, field: str, names: list[str], *, first_id: int = 1) -> dict[str, int]:
    """Returns ``{name: id}`` for ``names`` in ``mask_targets[field]``, giving each new name the next free id.

    Each new id is claimed with a conditional update (only if no one took that id meanwhile), so processes
    labelling shards of one dataset at the same time never give one id two names.
    """
    collection = _collection(dataset)
    ids: dict[str, int] = {}
    for name in dict.fromkeys(names):
        while True:
            current = stored_mask_targets(dataset, field)
            by_name = {v: k for k, v in current.items()}
            if name in by_name:
                ids[name] = by_name[name]
                break
            candidate = max([first_id - 1, *current]) + 1
            key = f"mask_targets.{field}.{candidate}"
            claimed = collection.update_one(
                {"_id": dataset._doc.id, key: {"$exists": False}}, {"$set": {key: name}}
            )
            if claimed.modified_count:
                ids[name] = candidate
                break
    dataset.reload()
    return ids


def merge_mask_targets(
    samples: Any, field: str, targets: Mapping[int, str], *, overwrite: bool = False
) -> dict[int, str]:
    """Adds ``targets`` to ``mask_targets[field]`` key by key, keeping every other entry; returns the result.

    An id already mapped to another name raises :class:`MaskTargetConflict` unless ``overwrite``.
    """
    dataset = samples._dataset
    set_mask_targets(dataset, field, check_mask_targets(dataset, field, targets, overwrite=overwrite))
    return stored_mask_targets(dataset, field)
