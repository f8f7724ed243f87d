"""samseg: Segment Anything for semantic segmentation and dataset QA, on FiftyOne datasets.

The SDK functions are imported lazily so that the algorithm modules (``samseg_core.masks``, ``.metrics``,
``.voting`` …) can be used, tested and benchmarked without importing FiftyOne.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_SDK = {
    "run_baseline": "samseg_core.stages.baseline",
    "semantic_voting": "samseg_core.stages.voting",
    "refine_with_sam": "samseg_core.stages.refinement",
    "prompt_study": "samseg_core.stages.prompt_study",
    "open_vocab_labels": "samseg_core.stages.engine",
    "evaluate_iou": "samseg_core.stages.evaluation",
    "agreement_iou": "samseg_core.stages.agreement",
    "detect_failures": "samseg_core.stages.failure_modes",
    "build_relabel_queue": "samseg_core.stages.curation",
    "load_relabel_results": "samseg_core.stages.curation",
    "delete_relabel_queue": "samseg_core.stages.curation",
    "calibrate_fusion": "samseg_core.stages.fusion",
    "apply_fusion": "samseg_core.stages.fusion",
    "load_fusion_calibration": "samseg_core.stages.fusion",
    "qa_summary": "samseg_core.stages.qa_summary",
    "RunSummary": "samseg_core.runner",
}

__all__ = [*_SDK, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _SDK:
        return getattr(importlib.import_module(_SDK[name]), name)
    raise AttributeError(f"module 'samseg_core' has no attribute '{name}'")
