"""Calibrated fusion: which SAM method to trust for which class, decided on labelled samples (FiftyOne-free).

A *candidate* is one method at one threshold: ``refine@0.7`` is samseg's gated refinement with no-harm gate 0.7,
``vote@0.9`` is no-harm voting with minimum vote share 0.9 (:func:`fusion_candidates`). Each candidate turns a
baseline class map into a map that differs from it at some pixels; a candidate's *changes into class c* are the
pixels it moves from another class to ``c``.

Calibration (:func:`calibrate`) takes a :class:`FusionTally` of the calibration split and one of the held-out
split. For every class ``c`` and candidate ``k`` it computes the **gain**: the change of the summed mIoU (one
confusion matrix over the split, as mmseg reports) when only ``k``'s changes into ``c`` are applied to the
baseline. That is ``c``'s IoU gain minus what the classes it takes pixels from lose, so a candidate that grows
``c`` by eating a neighbour is not credited for it. Per class the candidate with the highest calibration gain is
chosen when the gain is positive, at least ``min_support`` changed pixels support it, and it does not lose on the
held-out split; otherwise the class keeps the baseline. Last, the fused map of the held-out split is scored
exactly; while it scores below the baseline, the chosen class with the smallest held-out gain falls back.

:func:`fuse` applies a calibration's choice to any image: the baseline, plus each chosen candidate's changes into
the classes it was chosen for (where two disagree, the higher calibration gain wins).

The tallies are exact and small: per split, the baseline's confusion matrix, and the pixel counts of each
distinct tuple ``(ground truth, baseline, candidate 1, ..., candidate K)`` among the pixels some candidate
changes, so any rule over the candidates can be scored exactly without keeping the maps.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from samseg_core.metrics import MAX_CLASSES, confusion_matrix, scores_from_confusion

#: The methods calibration can choose from, and the thresholds each is tried at: ``refine`` at its no-harm gate
#: (minimum IoU of SAM's mask with the baseline region), ``vote`` (no-harm voting) at its minimum vote share.
METHOD_THRESHOLDS: dict[str, tuple[float, ...]] = {"refine": (0.5, 0.7, 0.9), "vote": (0.5, 0.7, 0.9)}
FUSION_METHODS: tuple[str, ...] = tuple(METHOD_THRESHOLDS)
BASELINE = "baseline"
#: Default share of the labelled samples held out to check the choice.
DEFAULT_HOLDOUT = 0.3
#: Default minimum of changed pixels (calibration split) behind a class's choice.
DEFAULT_MIN_SUPPORT = 200


@dataclass(frozen=True)
class Candidate:
    """One method at one threshold; ``name`` is ``"<method>@<threshold>"``."""

    method: str
    threshold: float

    @property
    def name(self) -> str:
        """``"<method>@<threshold>"``, e.g. ``"refine@0.7"``."""
        return f"{self.method}@{self.threshold:g}"


def fusion_candidates(methods: Sequence[str] = FUSION_METHODS) -> list[Candidate]:
    """The candidates of ``methods``, each at every threshold of :data:`METHOD_THRESHOLDS`."""
    unknown = sorted(set(methods) - set(METHOD_THRESHOLDS))
    if unknown:
        raise ValueError(f"unknown fusion method(s) {unknown}; expected some of {FUSION_METHODS}")
    return [Candidate(m, t) for m in methods for t in METHOD_THRESHOLDS[m]]


def split_of(sample_id: str, holdout: float) -> str:
    """``"held_out"`` for a stable ``holdout`` share of sample ids (by hash), else ``"calibration"``."""
    digest = hashlib.sha1(str(sample_id).encode()).digest()
    return "held_out" if int.from_bytes(digest[:4], "big") / 2**32 < holdout else "calibration"


@dataclass
class FusionTally:
    """Exact counts of one split: the baseline's confusion ``(gt, baseline) -> pixels`` and, over the pixels some
    candidate changes, ``(gt, baseline, candidate 1, ..., candidate K) -> pixels``."""

    candidates: list[str]
    confusion: Counter = field(default_factory=Counter)
    changes: Counter = field(default_factory=Counter)
    images: int = 0

    def add(
        self, gt: np.ndarray, baseline: np.ndarray, maps: Sequence[np.ndarray], ignore_index: int | None = 255
    ) -> None:
        """Adds one image: its ground truth, baseline and the candidates' maps (in :attr:`candidates` order)."""
        if len(maps) != len(self.candidates):
            raise ValueError(f"expected {len(self.candidates)} candidate maps, got {len(maps)}")
        gt, baseline = np.asarray(gt).ravel(), np.asarray(baseline).ravel()
        stack = np.stack([np.asarray(m).ravel() for m in maps]) if maps else np.zeros((0, gt.size), int)
        valid = gt != ignore_index if ignore_index is not None else np.ones(gt.size, bool)
        self.confusion.update(_count_pairs(gt[valid], baseline[valid]))
        changed = valid & (stack != baseline[None]).any(axis=0)
        self.changes.update(_count_rows(np.vstack([gt[changed], baseline[changed], stack[:, changed]])))
        self.images += 1


def _count_pairs(a: np.ndarray, b: np.ndarray) -> dict[tuple[int, int], int]:
    """Pixel counts of the distinct ``(a, b)`` pairs (the confusion matrix of a whole image, as a dict; a stray
    large id such as 65535 falls back to sorting, never to a huge matrix)."""
    if a.size == 0:
        return {}
    a, b = a.astype(np.int64), b.astype(np.int64)
    n = int(max(a.max(), b.max())) + 1
    if n > MAX_CLASSES:
        return _count_rows(np.stack([a, b]))
    cm = confusion_matrix(a, b, n, ignore_index=None)  # every id is below n: nothing is left out
    return {(int(r), int(c)): int(cm[r, c]) for r, c in zip(*np.nonzero(cm))}


def _count_rows(columns: np.ndarray) -> dict[tuple[int, ...], int]:
    """Pixel counts of the distinct columns of a (F, P) integer array, as ``{tuple: count}``."""
    if columns.shape[1] == 0:
        return {}
    rows, counts = np.unique(columns.astype(np.int64).T, axis=0, return_counts=True)
    return {tuple(int(v) for v in row): int(n) for row, n in zip(rows, counts)}


@dataclass
class _Arrays:
    """A tally as dense arrays over its classes' compact indices (position in the sorted class ids): the
    baseline confusion and the change rows."""

    confusion: np.ndarray  # (C, C) gt x baseline
    rows: np.ndarray  # (M, 2 + K): gt, baseline, candidates
    counts: np.ndarray  # (M,)


def class_ids_of(*tallies: FusionTally) -> np.ndarray:
    """The sorted class ids the tallies hold (ground truth, baseline or any candidate)."""
    ids = {v for tally in tallies for key in list(tally.confusion) + list(tally.changes) for v in key}
    return np.array(sorted(ids), np.int64)


def _arrays(tally: FusionTally, ids: np.ndarray) -> _Arrays:
    n = ids.size
    confusion = np.zeros((n, n), np.int64)
    if tally.confusion:
        pairs = np.searchsorted(ids, np.array(list(tally.confusion), np.int64))
        np.add.at(confusion, (pairs[:, 0], pairs[:, 1]), np.array(list(tally.confusion.values()), np.int64))
    k = len(tally.candidates)
    rows = np.searchsorted(ids, np.array(list(tally.changes), np.int64).reshape(-1, 2 + k))
    counts = np.array(list(tally.changes.values()), np.int64)
    return _Arrays(confusion, rows, counts)


def miou_of(confusion: np.ndarray) -> float:
    """Summed mIoU of a (C, C) gt x prediction confusion matrix over the classes present in either."""
    return scores_from_confusion(confusion).miou


def class_iou_of(confusion: np.ndarray) -> np.ndarray:
    """(C,) IoU per class of a gt x prediction confusion matrix (nan for classes in neither)."""
    return scores_from_confusion(confusion).per_class_iou


def _moved(arrays: _Arrays, candidate: int, target: int) -> np.ndarray:
    """(C, C) gt x baseline pixels that ``candidate`` moves into class index ``target``."""
    rows, counts = arrays.rows, arrays.counts
    new = rows[:, 2 + candidate]
    sel = (new == target) & (rows[:, 1] != target)
    moved = np.zeros_like(arrays.confusion)
    np.add.at(moved, (rows[sel, 0], rows[sel, 1]), counts[sel])
    return moved


def _apply(confusion: np.ndarray, moved: np.ndarray, target: int) -> np.ndarray:
    out = confusion - moved
    out[:, target] += moved.sum(axis=1)
    return out


def gain_table(tally: FusionTally, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per (candidate, class index of ``ids``): the summed-mIoU gain of applying only that candidate's changes
    into that class, the class's own IoU gain, and the number of pixels moved. Three (K, C) arrays."""
    arrays = _arrays(tally, ids)
    k, n = len(tally.candidates), ids.size
    base = scores_from_confusion(arrays.confusion)
    gain, class_gain = np.zeros((k, n)), np.zeros((k, n))
    support = np.zeros((k, n), np.int64)
    for cand in range(k):
        for c in np.unique(arrays.rows[:, 2 + cand]) if arrays.rows.size else []:
            moved = _moved(arrays, cand, int(c))
            if not moved.any():
                continue
            fused = scores_from_confusion(_apply(arrays.confusion, moved, int(c)))
            gain[cand, c] = fused.miou - base.miou
            class_gain[cand, c] = np.nan_to_num(fused.per_class_iou[c]) - np.nan_to_num(base.per_class_iou[c])
            support[cand, c] = moved.sum()
    return gain, class_gain, support


def fused_classes(rows: np.ndarray, choice: Mapping[int, int], priority: Sequence[int]) -> np.ndarray:
    """The fused class of each change row ``(gt, baseline, candidates...)`` under ``choice`` (class -> candidate
    index); classes are applied in ``priority`` order, later ones winning."""
    out = rows[:, 1].copy()
    for c in priority:
        new = rows[:, 2 + choice[c]]
        out = np.where((new == c) & (rows[:, 1] != c), c, out)
    return out


def fused_confusion(
    tally: FusionTally, ids: np.ndarray, choice: Mapping[int, int], priority: Sequence[int]
) -> np.ndarray:
    """The exact gt x fused confusion of a split (over ``ids``' compact indices) under ``choice`` (class id ->
    candidate index), classes painted in ``priority`` order."""
    arrays = _arrays(tally, ids)
    out = arrays.confusion.copy()
    if not arrays.rows.size or not choice:
        return out
    index = {int(c): int(i) for i, c in enumerate(ids)}
    compact = {index[c]: k for c, k in choice.items()}
    fused = fused_classes(arrays.rows, compact, [index[c] for c in priority])
    np.add.at(out, (arrays.rows[:, 0], arrays.rows[:, 1]), -arrays.counts)
    np.add.at(out, (arrays.rows[:, 0], fused), arrays.counts)
    return out


@dataclass
class FusionCalibration:
    """What calibration decided: per class the candidate to trust (absent: the baseline), and the table.

    Attributes:
        candidates: the candidate names, in tally order.
        choice: ``{class id: candidate name}`` for the classes that take a candidate's changes.
        priority: the chosen classes in painting order (ascending calibration gain: the highest gain wins).
        table: one row per class seen (dicts, JSON-serialisable; see :func:`calibrate`).
        scores: summed mIoU of the baseline and of the fusion on both splits, and their image counts.
    """

    candidates: list[str]
    choice: dict[int, str]
    priority: list[int]
    table: list[dict[str, Any]]
    scores: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (class ids as strings)."""
        return {
            "candidates": list(self.candidates),
            "choice": {str(c): k for c, k in self.choice.items()},
            "priority": [int(c) for c in self.priority],
            "table": self.table,
            "scores": self.scores,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FusionCalibration:
        """Inverse of :meth:`to_dict`."""
        return cls(
            candidates=list(data["candidates"]),
            choice={int(c): str(k) for c, k in data["choice"].items()},
            priority=[int(c) for c in data["priority"]],
            table=list(data.get("table", [])),
            scores=dict(data.get("scores", {})),
        )

    def methods(self) -> list[str]:
        """The methods some class was given (what :func:`fuse` needs computed)."""
        return sorted({name.split("@")[0] for name in self.choice.values()})


def _best(gain: np.ndarray, support: np.ndarray, c: int) -> int:
    """The candidate with the highest gain among those that change pixels into class ``c``."""
    return int(np.argmax(np.where(support[:, c] > 0, gain[:, c], -np.inf)))


def _decide(gain, support, held_gain, min_support) -> tuple[dict[int, int], dict[int, str]]:
    """Per class, the chosen candidate index and, for the others, why the baseline stays."""
    choice, reasons = {}, {}
    for c in range(gain.shape[1]):
        if not support[:, c].any():
            continue
        best = _best(gain, support, c)
        if gain[best, c] <= 0:
            reasons[c] = "no gain on calibration"
        elif support[best, c] < min_support:
            reasons[c] = f"too little support ({int(support[best, c])} px < {min_support})"
        elif held_gain[best, c] < 0:
            reasons[c] = "lost on held-out"
        else:
            choice[c] = best
    return choice, reasons


def calibrate(
    calibration: FusionTally,
    held_out: FusionTally,
    *,
    min_support: int = DEFAULT_MIN_SUPPORT,
    class_names: Mapping[int, str] | None = None,
) -> FusionCalibration:
    """Chooses, per class, the candidate whose changes into it raise the summed mIoU most (see the module
    docstring), checked on ``held_out``; classes without a good enough candidate keep the baseline.

    Table rows: ``class_id``, ``class``, ``method`` (a candidate name or ``"baseline"``), ``reason`` (why the
    baseline stays), ``gain`` / ``held_out_gain`` (summed-mIoU change on each split from this class's changes),
    ``class_iou_gain`` (the class's own IoU change, calibration split), ``support`` (pixels moved, calibration),
    ``best_candidate`` (the best candidate on calibration, chosen or not).
    """
    if calibration.candidates != held_out.candidates:
        raise ValueError("the two tallies were made with different candidates")
    names = dict(class_names or {})
    ids = class_ids_of(calibration, held_out)
    gain, class_gain, support = gain_table(calibration, ids)
    held_gain, _, _ = gain_table(held_out, ids)
    picked, reasons = _decide(gain, support, held_gain, min_support)  # by class index
    choice = {int(ids[c]): k for c, k in picked.items()}
    index = {int(c): i for i, c in enumerate(ids)}

    def by_gain(c: int) -> float:
        return gain[choice[c], index[c]]

    base_held = miou_of(_arrays(held_out, ids).confusion)
    while choice:  # the classes' changes interact: check the fusion as a whole on the held-out split
        priority = sorted(choice, key=by_gain)
        if not miou_of(fused_confusion(held_out, ids, choice, priority)) < base_held - 1e-12:
            break
        worst = min(choice, key=lambda c: held_gain[choice[c], index[c]])
        reasons[index[worst]] = "fusion lost on held-out"
        del choice[worst]
    priority = sorted(choice, key=by_gain)
    table = []
    for i in sorted({index[c] for c in choice} | set(reasons)):
        best, c = _best(gain, support, i), int(ids[i])
        table.append({
            "class_id": c, "class": names.get(c, str(c)),
            "method": calibration.candidates[choice[c]] if c in choice else BASELINE,
            "reason": reasons.get(i, ""), "gain": float(gain[best, i]), "held_out_gain": float(held_gain[best, i]),
            "class_iou_gain": float(class_gain[best, i]), "support": int(support[best, i]),
            "best_candidate": calibration.candidates[best],
        })  # fmt: skip
    scores = _scores(calibration, held_out, ids, choice, priority)
    named = {c: calibration.candidates[k] for c, k in choice.items()}
    return FusionCalibration(list(calibration.candidates), named, priority, table, scores)


def _scores(calibration, held_out, ids, choice, priority) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for split, tally in (("calibration", calibration), ("held_out", held_out)):
        out[split] = {
            "images": tally.images,
            "baseline_miou": miou_of(_arrays(tally, ids).confusion),
            "fused_miou": miou_of(fused_confusion(tally, ids, choice, priority)),
        }
    return out


def fuse(baseline: np.ndarray, maps: Mapping[str, np.ndarray], calibration: FusionCalibration) -> np.ndarray:
    """The baseline with each chosen candidate's changes into the classes calibration gave it.

    ``maps`` holds the candidates' maps by name (at least those in ``calibration.choice``)."""
    baseline = np.asarray(baseline)
    out = baseline.copy()
    for c in calibration.priority:  # ascending gain: the highest-gain class paints last and wins
        new = np.asarray(maps[calibration.choice[c]])
        out = np.where((new == c) & (baseline != c), c, out)
    return out.astype(baseline.dtype, copy=False)
