"""Showing a run's new fields in the App at once: in samseg's sidebar group and in the sample modal.

``reload_dataset`` alone updates the grid's field list only, and puts a new field in a default group (the App
keeps the groups it loaded with); the sample modal keeps its own copy of the list (refreshed by the App only
when a sample is opened by a click in the grid) and does not fetch its open sample again. samseg's JavaScript
operator ``show_new_fields`` (``dist/index.umd.js``) waits until the grid lists the new fields, moves samseg's
into its group, gives the modal the same list and fetches the open sample again.
"""

from __future__ import annotations

from typing import Any

from samseg_core.schema import SIDEBAR_GROUP

#: samseg's App-side operator (``dist/index.umd.js``).
SHOW_NEW_FIELDS = "@samseg/samseg/show_new_fields"


def field_names(dataset: Any) -> list[str]:
    """The dataset's top-level sample fields (sorted). ``ctx.dataset`` is loaded afresh for every App request
    (fields a background worker added included), and a run in this process updates it as it adds fields."""
    return sorted(dataset.get_field_schema()) if dataset is not None else []


def samseg_group(dataset: Any) -> dict[str, Any] | None:
    """samseg's sidebar group as stored in the dataset's app config (``{"name", "paths"}``), or None."""
    for group in (dataset.app_config.sidebar_groups or []) if dataset is not None else []:
        if group.name == SIDEBAR_GROUP:
            return {"name": group.name, "paths": list(group.paths)}
    return None


def show_new_fields(ctx: Any, before: list[str] | set[str]) -> list[str]:
    """Reloads the App's dataset, waits until it lists every field added since ``before``, and shows them in
    samseg's sidebar group and in the sample modal (whose open sample is fetched again).

    Returns the new fields (empty when there are none; the App still reloads: values may have changed).
    """
    known = set(before)
    new = [name for name in field_names(ctx.dataset) if name not in known]
    ctx.trigger("reload_dataset")
    ctx.trigger(SHOW_NEW_FIELDS, {"paths": new, "group": samseg_group(ctx.dataset)})
    return new


def show_listed_fields_in_modal(ctx: Any) -> None:
    """Gives the sample modal the grid's field list now (before a panel opens a sample)."""
    ctx.trigger(SHOW_NEW_FIELDS, {"paths": [], "group": samseg_group(ctx.dataset)})
