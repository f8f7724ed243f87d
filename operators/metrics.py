"""Custom metric for FiftyOne's ``evaluate_segmentations``: mIoU, shown by the App's evaluation panel.

Usage::

    dataset.evaluate_segmentations(
        "baseline", gt_field="ground_truth", eval_key="eval", custom_metrics=["@samseg/samseg/miou"]
    )
    # or with options: custom_metrics={"@samseg/samseg/miou": {"ignore_index": 255}}

It writes ``<eval_key>_miou`` per sample and stores the summed (mmseg/SSA) mIoU in the results'
``custom_metrics`` (``results.metrics()["miou"]``). Class ids come from the pixel values, named by the
dataset's mask targets; unlike FiftyOne's own metrics no id is treated as background.
"""

from __future__ import annotations

import logging
from typing import Any

import fiftyone.operators as foo
import fiftyone.operators.types as types

from samseg_core.stages.evaluation import miou_for_evaluation

logger = logging.getLogger(__name__)

METRIC_NAME = "miou"


class MIoUMetric(foo.EvaluationMetric):
    """Mean IoU of semantic segmentations (summed confusion over the evaluated samples)."""

    @property
    def config(self) -> foo.EvaluationMetricConfig:
        config = foo.EvaluationMetricConfig(
            name=METRIC_NAME,
            label="mIoU",
            description="Mean intersection over union (samseg): per sample and summed over the collection",
            eval_types=["segmentation"],
            aggregate_key="miou",
            lower_is_better=False,
            unlisted=True,
        )
        # fiftyone 1.22's compute_custom_metrics reads lower_is_better from config.kwargs, not the attribute
        config.kwargs["lower_is_better"] = False
        return config

    def resolve_input(self, ctx: Any) -> types.Property:
        inputs = types.Object()
        inputs.int(
            "ignore_index", label="Ignore index", default=255, description="Ground-truth value ignored"
        )
        inputs.bool("reduce_zero_label", label="Reduce zero label", default=False)
        return types.Property(inputs)

    def compute(
        self, samples: Any, results: Any, ignore_index: int | None = 255, reduce_zero_label: bool = False
    ) -> float | None:
        """Writes ``<eval_key>_miou`` per sample and returns the summed mIoU (None when nothing was scored)."""
        value, errors = miou_for_evaluation(
            samples,
            results.config.pred_field,
            results.config.gt_field,
            results.key,
            ignore_index=ignore_index,
            reduce_zero_label=reduce_zero_label,
        )
        if errors:
            logger.warning(
                "mIoU: %d samples could not be scored, e.g. %s", len(errors), next(iter(errors.values()))
            )
        return value

    def get_fields(self, samples: Any, config: Any, eval_key: str) -> list[str]:
        """The per-sample field this metric writes."""
        return [f"{eval_key}_miou"] if eval_key else []


OPERATORS = [MIoUMetric]
