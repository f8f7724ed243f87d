"""Deterministic, disjoint shards of a sample collection, so that several workers can split one run.

A shard is a contiguous range of sample ids: the ids of the collection are sorted, cut into ``num_shards``
nearly equal runs, and shard ``i`` is the view ``bounds[i] <= _id < bounds[i + 1]`` (the first shard has no lower
bound, the last no upper bound). Because the bounds cover the whole id space, the shards are disjoint and their
union is the collection, also for samples added after the bounds were computed (they land in exactly one shard).
The view holds two ids, not a list of ids, so a queued operation stays small for any shard size, and it is
JSON-serialisable (the App and the delegated-operation store both accept it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

Bounds = list[str | None]
_MAX_ID = "f" * 24


def shard_bounds(samples: Any, num_shards: int) -> Bounds:
    """Returns ``num_shards + 1`` id boundaries (hex strings; the first and last are None) splitting ``samples``.

    Shard ``i`` holds the samples with ``bounds[i] <= id < bounds[i + 1]``; sizes differ by at most one. With
    more shards than samples the extra shards are empty.
    """
    if num_shards < 1:
        raise ValueError(f"num_shards must be at least 1, got {num_shards}")
    ids = sorted(samples.values("id"))  # ObjectId hex strings sort like the ObjectIds themselves
    if not ids:
        # shard 0 takes everything (added later); the others get an empty range, so shards stay disjoint
        return [None, *[_MAX_ID] * (num_shards - 1), None]
    return [None, *[ids[(i * len(ids)) // num_shards] for i in range(1, num_shards)], None]


def view_between(samples: Any, lower: str | None, upper: str | None) -> Any:
    """Returns the view of ``samples`` with ``lower <= id < upper`` (None = unbounded)."""
    clauses = []
    if lower is not None:
        clauses.append({"$gte": ["$_id", {"$toObjectId": lower}]})
    if upper is not None:
        clauses.append({"$lt": ["$_id", {"$toObjectId": upper}]})
    if not clauses:
        return samples.view()
    return samples.match({"$expr": clauses[0] if len(clauses) == 1 else {"$and": clauses}})


def shard_views(samples: Any, num_shards: int) -> list[Any]:
    """Returns the ``num_shards`` disjoint shard views of ``samples`` (bounds computed once for all of them)."""
    bounds = shard_bounds(samples, num_shards)
    return [view_between(samples, bounds[i], bounds[i + 1]) for i in range(num_shards)]


def shard_view(samples: Any, num_shards: int, shard_index: int) -> Any:
    """Returns shard ``shard_index`` of ``num_shards`` of ``samples`` (deterministic for unchanged samples).

    Call :func:`shard_views` to build all shards from one set of bounds when the collection may change between
    calls.
    """
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index must lie in [0, {num_shards}), got {shard_index}")
    bounds = shard_bounds(samples, num_shards)
    return view_between(samples, bounds[shard_index], bounds[shard_index + 1])


def sum_shard_summaries(summaries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Adds up the per-shard run summaries (``processed``, ``skipped``, ``failed``, ``errors``)."""
    total: dict[str, Any] = {
        "processed": 0,
        "skipped": 0,
        "failed": 0,
        "errors": {},
        "shards": len(summaries),
    }
    for summary in summaries:
        for key in ("processed", "skipped", "failed"):
            total[key] += int(summary.get(key, 0))
        total["errors"].update(summary.get("errors") or {})
    return total
