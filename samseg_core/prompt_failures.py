"""Why a prompt type loses: the study's failure modes of the prompt sets made from a baseline (FiftyOne-free).

Prompt sets are made from the baseline's classes, so they inherit its errors. A prompt set of class ``c`` counts
as *missing*, *incomplete* or *overlapping* objects when an object of class ``c`` in the image has that failure
mode in the baseline, by :func:`samseg_core.failures.detect_failures_in_image`'s definitions (objects: ground
truth's connected regions per class; a prompt set can count under several modes). The workshop study blames
exactly these for refinement's losses; the prompt study reports, per configuration, how many prompt sets fell
under each mode and how many of those its gate accepted.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from samseg_core.failures import FAILURE_MODES, detect_failures_in_image
from samseg_core.masks import resize_mask_nearest


def class_failure_modes(
    baseline: np.ndarray, gt: np.ndarray, ignore_index: int | None = 255
) -> dict[int, set[str]]:
    """``{class id: failure modes of its objects}`` of a baseline against ground truth (classes whose objects
    are all ``ok`` are absent). A baseline at another resolution is compared at the ground truth's."""
    if baseline.shape != gt.shape:
        baseline = resize_mask_nearest(baseline, gt.shape)
    report = detect_failures_in_image(baseline, gt, ignore_index=ignore_index)
    modes: dict[int, set[str]] = {}
    for class_id, mode in zip(report.class_ids.tolist(), report.modes.tolist()):
        if mode in FAILURE_MODES:
            modes.setdefault(int(class_id), set()).add(mode)
    return modes


def prompt_set_failures(
    class_ids: np.ndarray, accepted: np.ndarray, modes_by_class: Mapping[int, set[str]]
) -> dict[str, int]:
    """Per failure mode, the prompt sets of one image under it (``<mode>``) and the accepted ones among them
    (``<mode>_accepted``)."""
    out: dict[str, int] = {}
    for mode in FAILURE_MODES:
        hit = np.array([mode in modes_by_class.get(int(c), ()) for c in class_ids], dtype=bool)
        out[mode] = int(hit.sum())
        out[f"{mode}_accepted"] = int((hit & np.asarray(accepted, bool)).sum())
    return out
