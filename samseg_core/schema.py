"""Sample fields by label type: what a field holds, creating a stage's output fields, and who created a field.

A field samseg creates carries ``field.info["samseg"]`` = ``{"stage": ..., "owner": ...}``, where ``owner`` is the
primary output field (or run key) of the run that created it. That record is how samseg tells its own fields
(which a resumed run may complete) from a user's fields of the same name (which it never replaces without
``overwrite=True``). The fields samseg creates are listed in the App's sidebar under a "samseg" group.
"""

from __future__ import annotations

from typing import Any

import fiftyone as fo

from samseg_core.label_types import DETECTIONS, DICT, FLOAT, HEATMAP, INT, SEGMENTATION, STRING

_LABEL_CLASSES = {SEGMENTATION: fo.Segmentation, DETECTIONS: fo.Detections, HEATMAP: fo.Heatmap}
_PRIMITIVE_FIELDS = {FLOAT: fo.FloatField, INT: fo.IntField, STRING: fo.StringField, DICT: fo.DictField}
INFO_KEY = "samseg"
#: The App sidebar group that lists the fields samseg creates.
SIDEBAR_GROUP = "samseg"

#: Sample fields FiftyOne itself manages; no stage may write them.
RESERVED_FIELDS = frozenset(
    {
        "id",
        "_id",
        "filepath",
        "tags",
        "metadata",
        "media_type",
        "created_at",
        "last_modified_at",
        "_dataset_id",
    }
)


def field_type_name(field: Any) -> str:
    """A readable name of what a schema field holds (``Segmentation``, ``float``, ``StringField``, ...)."""
    document = getattr(field, "document_type", None)
    if document is not None:
        return document.__name__
    for name, cls in _PRIMITIVE_FIELDS.items():
        if type(field) is cls:
            return name
    return type(field).__name__


def holds(field: Any, label_type: str) -> bool:
    """Whether schema ``field`` holds ``label_type`` (a label class name, or float / int / str / dict)."""
    if label_type in _LABEL_CLASSES:
        return getattr(field, "document_type", None) is _LABEL_CLASSES[label_type]
    if label_type == FLOAT:
        return isinstance(field, (fo.FloatField, fo.IntField))
    return isinstance(field, _PRIMITIVE_FIELDS[label_type])


def fields_holding(samples: Any, label_type: str) -> list[str]:
    """Top-level fields of ``samples`` that hold ``label_type``, sorted."""
    return sorted(name for name, field in samples.get_field_schema().items() if holds(field, label_type))


def field_owner(dataset: Any, name: str) -> dict[str, Any] | None:
    """The samseg record of a field (``{"stage", "owner"}``), or None when samseg did not create it."""
    field = dataset.get_field(name)
    info = getattr(field, "info", None) or {}
    record = info.get(INFO_KEY)
    return dict(record) if isinstance(record, dict) else None


def declare_field(dataset: Any, name: str, label_type: str, *, stage: str, owner: str) -> None:
    """Creates ``name`` holding ``label_type`` with samseg's ownership record (an existing field is kept).

    Declaring the type up front lets a batch whose values are all None be written (FiftyOne cannot infer a
    type from None alone).
    """
    if dataset.get_field(name) is not None:
        return
    info = {INFO_KEY: {"stage": stage, "owner": owner}}
    if label_type in _LABEL_CLASSES:
        dataset.add_sample_field(
            name, fo.EmbeddedDocumentField, embedded_doc_type=_LABEL_CLASSES[label_type], info=info
        )
    else:
        dataset.add_sample_field(name, _PRIMITIVE_FIELDS[label_type], info=info)
    add_to_sidebar_group(dataset, [name])


def add_to_sidebar_group(dataset: Any, names: list[str]) -> None:
    """Lists ``names`` in the App's "samseg" sidebar group (:data:`SIDEBAR_GROUP`), created after "labels".

    Updated in the database key by key, never by saving a stale in-memory app config: with no
    ``app_config.sidebar_groups`` yet, FiftyOne's default groups are stored with these names moved into the samseg
    group (as FiftyOne places its own evaluation fields); otherwise only the samseg group changes (created when
    missing, without moving any other group), and a name the user already placed in a group of their own stays
    where it is.
    """
    from samseg_core.mask_targets import _collection

    names = list(dict.fromkeys(names))
    if not names:
        return
    collection = _collection(dataset)
    groups = _stored_groups(collection, dataset)
    if groups is None and _store_default_groups(collection, dataset, names):
        dataset.reload()
        return
    if groups is None:  # another process stored them meanwhile
        groups = _stored_groups(collection, dataset) or []
    placed = {path for group in groups for path in group.get("paths") or ()}
    new = [name for name in names if name not in placed]
    if new and not _insert_group(collection, dataset, groups, new):
        collection.update_one(
            {"_id": dataset._doc.id},
            {"$addToSet": {"app_config.sidebar_groups.$[group].paths": {"$each": new}}},
            array_filters=[{"group.name": SIDEBAR_GROUP}],
        )
    dataset.reload()


def _stored_groups(collection: Any, dataset: Any) -> list[dict] | None:
    """The dataset's sidebar groups as stored in the database now (None: the App's defaults)."""
    doc = collection.find_one({"_id": dataset._doc.id}, {"app_config.sidebar_groups": 1}) or {}
    return (doc.get("app_config") or {}).get("sidebar_groups")


def _store_default_groups(collection: Any, dataset: Any, names: list[str]) -> bool:
    """Stores FiftyOne's default sidebar groups plus the samseg group holding ``names``, if the dataset has no
    sidebar groups yet; returns whether it did."""
    groups = []
    for group in fo.DatasetAppConfig.default_sidebar_groups(dataset):
        group.paths = [path for path in group.paths if path not in names]
        groups.append(group.to_dict())
    groups.insert(_after_labels(groups), fo.SidebarGroupDocument(name=SIDEBAR_GROUP, paths=names).to_dict())
    stored = collection.update_one(
        {"_id": dataset._doc.id, "app_config.sidebar_groups": None},
        {"$set": {"app_config.sidebar_groups": groups}},
    )
    return bool(stored.modified_count)


def _insert_group(collection: Any, dataset: Any, groups: list[dict], names: list[str]) -> bool:
    """Adds the samseg group holding ``names`` after "labels" (the other groups keep their order), unless a
    samseg group exists already; returns whether it did."""
    group = fo.SidebarGroupDocument(name=SIDEBAR_GROUP, paths=names).to_dict()
    inserted = collection.update_one(
        {"_id": dataset._doc.id, "app_config.sidebar_groups.name": {"$ne": SIDEBAR_GROUP}},
        {"$push": {"app_config.sidebar_groups": {"$each": [group], "$position": _after_labels(groups)}}},
    )
    return bool(inserted.modified_count)


def _after_labels(groups: list[dict]) -> int:
    """The position just after the "labels" group (the end when there is none)."""
    names = [group.get("name") for group in groups]
    return names.index("labels") + 1 if "labels" in names else len(names)


def hide_in_app_by_default(dataset: Any, names: list[str]) -> None:
    """Leaves ``names`` unticked in the App's sidebar by default (``app_config.active_fields``), so that
    samseg's per-mask and failure layers do not paint the grid when a dataset is opened; a user ticks them.

    Updated in the database key by key: with no ``active_fields`` yet they become an exclusion list of these
    names; an exclusion list gains them; an inclusion list the user chose is left as it is (these names are
    not in it, so they are unticked already).
    """
    from samseg_core.mask_targets import _collection

    if not names:
        return
    collection = _collection(dataset)
    created = collection.update_one(
        {"_id": dataset._doc.id, "app_config.active_fields": {"$exists": False}},
        {"$set": {"app_config.active_fields": {"exclude": True, "paths": sorted(set(names))}}},
    )
    if not created.modified_count:
        collection.update_one(
            {"_id": dataset._doc.id, "app_config.active_fields.exclude": True},
            {"$addToSet": {"app_config.active_fields.paths": {"$each": sorted(set(names))}}},
        )
    dataset.reload()
