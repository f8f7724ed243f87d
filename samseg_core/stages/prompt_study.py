"""The prompt study (the workshop study's Table 2): several refinement configurations side by side.

``prompt_study`` runs prompt configurations of :func:`~samseg_core.stages.refinement.refine_with_sam` on a view
with a baseline and ground truth, writes one field per configuration and returns a
:class:`PromptStudyTable` (a :class:`~samseg_core.runner.RunSummary` with the table) of mIoU against ground
truth. Every image is encoded once for all configurations. Scoring uses the one bounded accumulator of
:mod:`samseg_core.metrics`: a stray id such as 65535 never makes a 65536 x 65536 confusion matrix.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from samseg_core.errors import StageParameterError
from samseg_core.failures import FAILURE_MODES
from samseg_core.labels import mask_targets_of, read_segmentation
from samseg_core.masks import resize_mask_nearest
from samseg_core.metrics import MAX_CLASSES, ConfusionAccumulator, IoUOptions, score_masks
from samseg_core.prompt_failures import class_failure_modes, prompt_set_failures
from samseg_core.refine import DEFAULT_GATE, STUDY_SETTINGS
from samseg_core.runner import STATS, RunSummary, SampleItem, run_stage
from samseg_core.stages.options import SEGMENTATION, OutputField, input_field, option, output_field
from samseg_core.stages.plan import StagePlan
from samseg_core.stages.qa_common import check_mask_targets_agree, resolve_class_names
from samseg_core.stages.refinement import (
    REFINE_SETTINGS,
    baseline_of,
    check_settings,
    default_settings,
    embedded_process,
    refine_image,
    region_stats,
)
from samseg_core.stages.registry import StageSpec, stage
from samseg_core.stages.sam_options import SamOptions, embedding_cache_for

#: Table 2 of the workshop study (plus the annotation study's loose box and extreme points), in the study's
#: setting, and samseg's gated default for comparison. Settings a configuration omits take refine_with_sam's
#: defaults.
STUDY_CONFIGS: dict[str, dict[str, Any]] = {
    "single_point": {**STUDY_SETTINGS, "prompts": ("point",)},
    "multiple_points": {**STUDY_SETTINGS, "prompts": ("points",)},
    "box": {**STUDY_SETTINGS, "prompts": ("box",)},
    "points_box": {**STUDY_SETTINGS, "prompts": ("points", "box")},
    "points_box_mask": {**STUDY_SETTINGS, "prompts": ("points", "box", "mask")},
    "loose_box": {**STUDY_SETTINGS, "prompts": ("loose_box",)},
    "extreme_points": {**STUDY_SETTINGS, "prompts": ("extreme_points",)},
    "points_box_gated": {"prompts": ("points", "box"), "gate": DEFAULT_GATE, "fill": "baseline"},
}

#: The names of :data:`STUDY_CONFIGS` (a test keeps the two equal).
StudyConfig = Literal[
    "single_point",
    "multiple_points",
    "box",
    "points_box",
    "points_box_mask",
    "loose_box",
    "extreme_points",
    "points_box_gated",
]

_CONFIG_NAME = re.compile(r"[A-Za-z0-9_]+")


@dataclass(frozen=True)
class PromptStudyOptions(SamOptions):
    """Options of :func:`prompt_study`."""

    baseline_field: str = input_field(
        "baseline",
        SEGMENTATION,
        "The baseline segmentation the prompts are made from",
        label="Baseline field",
    )
    gt_field: str = input_field(
        "ground_truth", SEGMENTATION, "The ground truth every configuration is scored against",
        label="Ground truth",
    )  # fmt: skip
    configs: tuple[StudyConfig, ...] = option(
        tuple(STUDY_CONFIGS), "Configurations to run: the study's Table 2 rows, loose box, extreme points and "
        "samseg's gated points+box", label="Configurations",
    )  # fmt: skip
    custom_configs: Mapping[str, Mapping[str, Any]] | None = option(
        None, "Further configurations: name -> refine_with_sam settings (prompts, gate, fill, ...)",
        python_only=True,
    )  # fmt: skip
    field_prefix: str = output_field(
        "study_", SEGMENTATION, "Each configuration is written to the field <field_prefix><config>",
        label="Output field prefix",
    )  # fmt: skip
    common: Mapping[str, Any] | None = option(
        None, "refine_with_sam settings for every configuration that does not set them", python_only=True
    )
    num_classes: int | None = option(
        None, "Classes are ids 0..num_classes-1; larger ground-truth ids are ignored (empty: every id the mask "
        "targets or masks hold)",
        ge=1, le=MAX_CLASSES,
    )  # fmt: skip
    ignore_index: int | None = option(255, "Ground-truth id that is not scored (empty: none)", ge=0, le=65535)

    def __post_init__(self) -> None:
        # the outputs follow from the configuration names, so these are checked before any field role
        custom = self.custom_configs
        if custom is not None and not isinstance(custom, Mapping):
            raise StageParameterError(
                "custom_configs", f"expected a mapping, got {type(custom).__name__}",
                "pass {name: {setting: value}}",
            )  # fmt: skip
        if not self.config_names():
            raise StageParameterError(
                "configs", "no configuration chosen", f"choose some of {', '.join(STUDY_CONFIGS)}"
            )
        clash = sorted(set(self.configs) & set(custom or {}))
        if clash:
            raise StageParameterError(
                "custom_configs",
                f"{clash} are also chosen in configs",
                "give your configurations other names",
            )
        bad = [name for name in custom or {} if not _CONFIG_NAME.fullmatch(str(name))]
        if bad:
            raise StageParameterError(
                "custom_configs",
                f"{bad} cannot be part of a field name",
                "use letters, digits and underscores",
            )
        if "baseline" in (custom or {}):
            raise StageParameterError("custom_configs", "'baseline' is the table's row of the baseline field",
                                      "give the configuration another name")  # fmt: skip

    @classmethod
    def normalize(cls, values: dict[str, Any]) -> dict[str, Any]:
        """``configs={name: settings}`` (the old form) runs exactly those: it becomes ``custom_configs``."""
        configs = values.get("configs")
        if isinstance(configs, Mapping):
            if values.get("custom_configs") is not None:
                raise StageParameterError(
                    "custom_configs", "configs is a mapping of configurations too", "pass one mapping"
                )
            values.update(configs=(), custom_configs=configs)
        return values

    def config_names(self) -> list[str]:
        """The configurations to run, in order: the chosen study configurations, then the custom ones."""
        return [*self.configs, *(self.custom_configs or {})]

    def study_fields(self) -> dict[str, str]:
        """Configuration name -> its output field."""
        return {name: f"{self.field_prefix}{name}" for name in self.config_names()}

    def output_fields(self) -> list[OutputField]:
        return [OutputField(name, SEGMENTATION, "field_prefix") for name in self.study_fields().values()]

    def resolved_configs(self) -> dict[str, dict[str, Any]]:
        """Each configuration's full, checked refinement settings: its own, then ``common``, then the
        defaults of refine_with_sam."""
        base = {**default_settings(), **check_settings(self.common or {}, "common")}
        custom = self.custom_configs or {}
        out = {}
        for name in self.config_names():
            param = "custom_configs" if name in custom else "configs"
            own = custom[name] if name in custom else STUDY_CONFIGS[name]
            out[name] = {**base, **check_settings(own, param)}
        return out

    def check(self, samples: Any) -> None:
        """The configurations' settings are valid; the baseline names the ground truth's ids alike."""
        self.resolved_configs()
        check_mask_targets_agree(samples, "baseline_field", self.gt_field, [self.baseline_field])


PROMPT_STUDY = StageSpec(
    name="prompt_study",
    label="prompt study",
    description="Compare SAM prompt configurations against ground truth (the study's Table 2) on a view",
    options=PromptStudyOptions,
    batch_size=4,
    aliases={"semantic_field": "baseline_field"},
    next_step="compare the prompt types in this run's table; refine with the best one (samseg: SAM refinement)",
)


# --------------------------------------------------------------------------------------------- the table


@dataclass
class PromptStudyTable(RunSummary):
    """The run's summary plus the prompt study's comparison: one row for the baseline, one per configuration.

    Each row: ``config``, ``field``, ``settings`` (prompts and options), ``miou`` (from the summed confusion
    matrix over all images, the mmseg / SSA reduction), ``mean_image_miou`` (mean of per-image mIoUs),
    ``pixel_accuracy``, ``delta_miou`` (``miou`` minus the baseline's), ``accepted`` (share of prompt sets
    that passed the gate in this run, None for the baseline or when nothing ran) and, per failure mode of
    :mod:`samseg_core.prompt_failures` (``missing``, ``incomplete``, ``overlapping``), the prompt sets under it
    and ``<mode>_accepted``, those the gate accepted (samples with ground truth only; None for the baseline).
    mIoU values are in [0, 1].
    """

    rows: list[dict[str, Any]] = field(default_factory=list)
    num_images: int = 0
    fields: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict: the RunSummary keys, ``rows``, ``num_images``, ``fields`` and ``table``
        (the table as fenced text, which the operator shows as markdown)."""
        return {
            **super().to_dict(),
            "rows": [{key: _plain(value) for key, value in row.items()} for row in self.rows],
            "num_images": self.num_images,
            "fields": dict(self.fields),
            "table": f"```\n{self.format_table()}\n```",
        }

    def format_table(self) -> str:
        """The table as aligned text (mIoU in percent, as the study reports it)."""
        return format_table(self)

    def __str__(self) -> str:
        return self.format_table()


def _plain(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


def _percent(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}"


def _mode_cell(row: Mapping[str, Any], mode: str) -> str:
    """``accepted/total`` prompt sets under a failure mode (``-`` for the baseline)."""
    total = row.get(mode)
    return "-" if total is None else f"{row.get(f'{mode}_accepted', 0)}/{total}"


def _table_line(row: Mapping[str, Any]) -> list[str]:
    delta = row.get("delta_miou")
    return [
        str(row["config"]),
        _percent(row.get("miou")),
        _percent(row.get("mean_image_miou")),
        _percent(row.get("pixel_accuracy")),
        "-" if delta is None or math.isnan(delta) else f"{100 * delta:+.2f}",
        _percent(row.get("accepted")),
        *(_mode_cell(row, mode) for mode in FAILURE_MODES),
        str(row.get("settings", "")),
    ]


def format_table(table: PromptStudyTable | Sequence[Mapping[str, Any]]) -> str:
    """Returns a prompt study table (or its rows) as aligned text for printing; the failure-mode columns read
    ``accepted/total`` prompt sets with missing / incomplete / overlapping objects."""
    rows = table.rows if isinstance(table, PromptStudyTable) else list(table)
    header = [
        "config",
        "mIoU",
        "mean img mIoU",
        "pixel acc",
        "delta mIoU",
        "accepted",
        *FAILURE_MODES,
        "settings",
    ]
    lines = [header, *(_table_line(row) for row in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = [
        "  ".join(
            cell.ljust(w) if i in (0, len(header) - 1) else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(line, widths))
        ).rstrip()
        for line in lines
    ]
    text.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(text)


# ------------------------------------------------------------------------------------------------ scoring


def _chunks(seq: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(seq), size):
        yield seq[start : start + size]


def _scores_row(totals: ConfusionAccumulator) -> dict[str, float]:
    summed = totals.summed()
    mious = np.asarray(totals.image_mious, dtype=np.float64)
    mious = mious[~np.isnan(mious)]
    return {
        "miou": math.nan if summed is None else summed.miou,
        "mean_image_miou": float(mious.mean()) if mious.size else math.nan,
        "pixel_accuracy": math.nan if summed is None else summed.pixel_accuracy,
    }


def _scoring(samples: Any, gt_field: str, pred_fields: Sequence[str], num_classes: int | None,
             ignore_index: int | None) -> IoUOptions:  # fmt: skip
    """How the study scores: ids 0..num_classes-1 when given, else every id the mask targets name below
    MAX_CLASSES (an entry such as 65535: "void" must not size the confusion matrix) plus the ids observed."""
    if num_classes:
        return IoUOptions(
            known_classes=num_classes,
            ignore_index=ignore_index,
            classes=tuple(range(num_classes)),
            boundary=False,
        )
    names = resolve_class_names(samples, gt_field, pred_fields)
    known = max((c for c in names if c != ignore_index and c < MAX_CLASSES), default=-1) + 1
    return IoUOptions(known_classes=known, ignore_index=ignore_index, boundary=False)


def _without_ids_from(gt: np.ndarray, num_classes: int | None) -> np.ndarray:
    """Ground truth whose ids from ``num_classes`` on are ignored (MAX_CLASSES is never a class)."""
    if not num_classes or not gt.size or gt.max() < num_classes:
        return gt
    return np.where(gt < num_classes, gt, MAX_CLASSES)


def study_scores(
    samples: Any,
    gt_field: str,
    pred_fields: Mapping[str, str],
    *,
    num_classes: int | None = None,
    ignore_index: int | None = 255,
    chunk_size: int = 32,
) -> tuple[dict[str, dict[str, float]], int]:
    """Returns ``{name: {miou, mean_image_miou, pixel_accuracy}}`` of each prediction field against
    ``gt_field``, and the number of images scored (those with ground truth and every prediction).

    Class ids at or above :data:`~samseg_core.metrics.MAX_CLASSES` are never classes: in a prediction they are
    wrong, in ground truth ignored, so memory stays bounded whatever the masks hold.

    Args:
        samples: a dataset or view.
        gt_field: ground-truth ``fo.Segmentation`` field.
        pred_fields: row name -> prediction field.
        num_classes: the classes are ids ``0..num_classes-1`` (larger ids are ignored in ground truth and
            wrong in a prediction); by default every id in the mask targets or the masks.
        ignore_index: ground-truth id that is not scored.
        chunk_size: samples whose masks are read at a time.
    """
    scoring = _scoring(samples, gt_field, list(pred_fields.values()), num_classes, ignore_index)
    totals = {name: ConfusionAccumulator(scoring.classes) for name in pred_fields}
    fields = [gt_field, *pred_fields.values()]
    scored = 0
    for chunk in _chunks(samples.values("id"), chunk_size):
        columns = samples.select(list(chunk), ordered=True).values(fields)
        for labels in zip(*columns):
            maps = [read_segmentation(label) for label in labels]
            if any(m is None for m in maps):
                continue
            gt = _without_ids_from(maps[0], num_classes)
            for name, pred in zip(pred_fields, maps[1:]):
                pred = pred if pred.shape == gt.shape else resize_mask_nearest(pred, gt.shape)
                totals[name].add(score_masks(gt, pred, scoring))
            scored += 1
    return {name: _scores_row(acc) for name, acc in totals.items()}, scored


# ---------------------------------------------------------------------------------------------- the stage


def _settings_text(settings: Mapping[str, Any]) -> str:
    parts = ["+".join(settings.get("prompts", ()))]
    shown = REFINE_SETTINGS[
        1 : REFINE_SETTINGS.index("fill") + 1
    ]  # granularity ... fill: what tells rows apart
    parts += [f"{key}={settings[key]}" for key in shown if key in settings]
    return " ".join(parts)


class _GateCounts:
    """Prompt sets and accepted ones per configuration, summed from the runner's per-sample STATS."""

    def __init__(self, names: Sequence[str]) -> None:
        self.prompt_sets = dict.fromkeys(names, 0)
        self.accepted = dict.fromkeys(names, 0)
        keys = [k for mode in FAILURE_MODES for k in (mode, f"{mode}_accepted")]
        self.failures = {name: dict.fromkeys(keys, 0) for name in names}

    def add(self, sample_id: str, stats: Mapping[str, Mapping[str, int]]) -> None:
        for name, counts in stats.items():
            self.prompt_sets[name] += counts["prompt_sets"]
            self.accepted[name] += counts["accepted"]
            for key in self.failures[name]:
                self.failures[name][key] += counts.get(key, 0)

    def share(self, name: str) -> float | None:
        total = self.prompt_sets[name]
        return self.accepted[name] / total if total else None


def _rows(
    options: PromptStudyOptions, configs: Mapping[str, Mapping[str, Any]], scores: Mapping[str, Any],
    counts: _GateCounts,
) -> list[dict[str, Any]]:  # fmt: skip
    base = scores["baseline"]["miou"]
    rows = [{"config": "baseline", "field": options.baseline_field, "settings": "", **scores["baseline"],
             "delta_miou": 0.0, "accepted": None, **dict.fromkeys(FAILURE_MODES)}]  # fmt: skip
    for name, field_name in options.study_fields().items():
        rows.append(
            {
                "config": name,
                "field": field_name,
                "settings": _settings_text(configs[name]),
                **scores[name],
                "delta_miou": scores[name]["miou"] - base,
                "accepted": counts.share(name),
                **counts.failures[name],
            }
        )
    return rows


@stage(PROMPT_STUDY)
def prompt_study(plan: StagePlan, options: PromptStudyOptions) -> PromptStudyTable:
    """Runs several prompt configurations, writes one field each and compares their mIoU with the baseline's.

    Each configuration ``c`` is written to ``<field_prefix><c>`` (mask targets: the baseline's). Every image is
    encoded once for all configurations, so the study costs one SAM encoder pass plus one decoder call per
    configuration and image. The scores cover every sample of the view with ground truth and every
    prediction (with ``skip_existing``, also the ones an earlier run wrote); ``skip_existing`` looks at the
    first configuration's field. Print the table with ``print(table.format_table())``.

    Returns:
        a :class:`PromptStudyTable`: the RunSummary plus ``rows``, ``num_images`` and ``fields``;
        ``extra`` holds ``encoder_calls`` and, per configuration, ``prompt_sets`` and ``accepted``.
    """
    configs = options.resolved_configs()
    fields = options.study_fields()
    cache = embedding_cache_for(options, plan.run.device)
    targets = mask_targets_of(plan.samples, options.baseline_field)
    for field_name in fields.values():
        plan.add_mask_targets(field_name, targets, param="field_prefix")
    counts = _GateCounts(list(configs))
    encoder_calls_before = cache.encoder_calls

    def study_item(item: SampleItem, embedding: Any) -> dict[str, Any]:
        baseline = baseline_of(item, options.baseline_field)
        gt = read_segmentation(item.inputs.get(options.gt_field))
        modes = None if gt is None else class_failure_modes(baseline, gt, options.ignore_index)
        out: dict[str, Any] = {STATS: {}}
        for name, settings in configs.items():
            refined, result = refine_image(cache, embedding, baseline, item.image.shape[:2], settings)
            out[fields[name]] = plan.segmentation(fields[name], refined, item.id)
            out[STATS][name] = region_stats(result)
            if modes is not None:
                regions = result.regions
                out[STATS][name].update(prompt_set_failures(regions.class_ids, regions.accepted, modes))
        return out

    summary = run_stage(plan, process=embedded_process(cache, study_item), on_result=counts.add)
    summary.extra.update(
        encoder_calls=cache.encoder_calls - encoder_calls_before,
        prompt_sets=dict(counts.prompt_sets),
        accepted=dict(counts.accepted),
    )
    scores, num_images = study_scores(
        plan.samples, options.gt_field, {"baseline": options.baseline_field, **fields},
        num_classes=options.num_classes, ignore_index=options.ignore_index,
    )  # fmt: skip
    base = {f.name: getattr(summary, f.name) for f in dataclasses.fields(RunSummary)}
    rows = _rows(options, configs, scores, counts)
    return PromptStudyTable(**base, rows=rows, num_images=num_images, fields=fields)
