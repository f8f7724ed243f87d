"""Open-vocabulary labels for masks on a FiftyOne collection (SSA-engine), batched across masks and images."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from samseg_core.engine import MaskLabel, OpenVocabEngine, SemanticBranch, engine_preset, paint_class_map
from samseg_core.errors import StageParameterError
from samseg_core.labels import detections_from_masks, mask_targets_of, read_segmentation
from samseg_core.mask_targets import claim_class_ids
from samseg_core.masks import resize_mask_nearest
from samseg_core.models.resolve import CAPTIONER, CLIP, CLIPSEG, SEMANTIC, resolve_model
from samseg_core.nouns import merge_class_names
from samseg_core.runner import STATS, RunSummary, SampleItem, StageResult, run_stage
from samseg_core.stages.options import DETECTIONS, SEGMENTATION, input_field, option, output_field
from samseg_core.stages.plan import StagePlan
from samseg_core.stages.registry import StageSpec, stage
from samseg_core.stages.sam_options import MaskSourceOptions, mask_source_for, mask_source_summary

DEFAULT_LABEL_FIELD = "ssa_engine"
#: Class name of pixels of the merged segmentation no labelled mask covers.
UNLABELED = "unlabeled"


@dataclass(frozen=True)
class EngineOptions(MaskSourceOptions):
    """Options of :func:`open_vocab_labels`."""

    label_field: str = output_field(
        DEFAULT_LABEL_FIELD, DETECTIONS, "Output Detections: one per mask, label = class name, confidence = "
        "CLIPSeg score, with class_proposals, proposal_scores, caption, area, skipped_reason",
        label="Output detections field",
    )  # fmt: skip
    segmentation_field: str | None = output_field(
        None, SEGMENTATION, "Optional merged segmentation of the labelled masks (smaller on top); a class keeps "
        "its id across samples, runs and shards", label="Merged segmentation field (optional)",
    )  # fmt: skip
    baseline_fields: tuple[str, ...] = input_field(
        (), SEGMENTATION, "Stored segmentation fields used as close-set branches (with their mask targets)",
        required=False, label="Close-set segmentation fields",
    )  # fmt: skip
    semantic_models: tuple[str, ...] | None = option(
        None, "Segmenters run on the fly as close-set branches (hub ids, directories, module:function specs); "
        "unset: the preset's when no baseline fields are given; empty: none", label="Close-set segmenters",
    )  # fmt: skip
    segmenters: tuple[Any, ...] = option(
        (), "Built segmenters run as close-set branches too (built models given as semantic_models land here)",
        python_only=True,
    )  # fmt: skip
    model_preset: Literal["light", "full"] = option(
        "light", "Default models: light (CLIP ViT-B/32, BLIP base) or full (SSA's: CLIP ViT-L/14, BLIP large, "
        "OneFormer COCO + ADE20K); CLIPSeg rd64-refined in both", label="Model preset",
    )  # fmt: skip
    clip: Any = option(
        None, "CLIP: an open_clip name, a directory with open_clip_config.json, a module:function spec or a "
        "built model (empty: the preset's)", label="CLIP model (optional)",
    )  # fmt: skip
    clip_pretrained: str | None = option(
        None, "Pretrained tag or checkpoint file of a CLIP name (empty: the preset's, else openai)",
        label="CLIP weights (optional)",
    )  # fmt: skip
    captioner: Any = option(
        None, "BLIP: a hub id, a save_pretrained directory, a module:function spec or a built model (empty: "
        "the preset's; unused with a vocabulary)", label="Captioner (optional)",
    )  # fmt: skip
    clipseg: Any = option(
        None, "CLIPSeg: a hub id, a save_pretrained directory, a module:function spec or a built model (empty: "
        "the preset's)", label="CLIPSeg model (optional)",
    )  # fmt: skip
    vocabulary: tuple[str, ...] | None = option(
        None, "Fixed vocabulary, one class name per item (commas allowed in a name): these names plus close-set "
        "proposals are the candidates and no caption is made; empty: open vocabulary", label="Fixed vocabulary",
    )  # fmt: skip
    topk: int = option(3, "Candidates CLIP keeps for CLIPSeg to choose from (SSA: 3)", ge=1, le=100)
    crop_scale_caption: float = option(1.6, "Crop enlargement for BLIP (SSA: 1.6)", ge=1.0, le=4.0)
    crop_scale_clip: float = option(1.2, "Crop enlargement for CLIP (SSA: 1.2)", ge=1.0, le=4.0)
    crop_scale_clipseg: float = option(1.6, "Crop enlargement for CLIPSeg (SSA: 1.6)", ge=1.0, le=4.0)
    min_area: int = option(
        100, "Masks with fewer pixels get no class (label unknown, skipped_reason set)", ge=0,
        label="Minimum mask area",
    )  # fmt: skip
    keep_skipped: bool = option(
        True, "Also store the masks that got no class (label unknown, skipped_reason)"
    )
    json_dir: str | None = option(
        None, "Optional directory for one SSA-format JSON per image (<file stem>_<sample id>.json)",
        label="JSON directory (optional)",
    )  # fmt: skip
    mask_batch_size: int = option(32, "Crops (and CLIPSeg pairs) per model call", ge=1, le=4096)

    @classmethod
    def normalize(cls, values: dict[str, Any]) -> dict[str, Any]:
        """The mask source's normalisation, plus: built models in ``semantic_models`` move to ``segmenters``,
        and an empty ``vocabulary`` (an untouched form list) means open vocabulary."""
        values = super().normalize(values)
        models = values.get("semantic_models")
        if models is not None and not isinstance(models, (str, os.PathLike)):
            models = list(models) if isinstance(models, (list, tuple)) else [models]
            built = [m for m in models if not isinstance(m, (str, os.PathLike))]
            if built:
                values["semantic_models"] = tuple(m for m in models if isinstance(m, (str, os.PathLike)))
                values["segmenters"] = (*(values.get("segmenters") or ()), *built)
        vocabulary = values.get("vocabulary")
        if vocabulary is not None and not isinstance(vocabulary, str) and len(vocabulary) == 0:
            values["vocabulary"] = None
        return values

    def check(self, samples: Any) -> None:
        """The mask source's checks, plus: a vocabulary must hold at least one usable class name."""
        super().check(samples)
        if self.vocabulary is not None and not merge_class_names(self.vocabulary):
            raise StageParameterError(
                "vocabulary",
                f"{list(self.vocabulary)} holds no usable class name",
                "pass class names such as ['car', 'road'], or no vocabulary for open-vocabulary labels",
            )

    def semantic_model_specs(self) -> tuple[Any, ...]:
        """The segmenters to run: the given ones, else the preset's when no other close-set source is given."""
        if self.semantic_models is None and not self.baseline_fields and not self.segmenters:
            return engine_preset(self.model_preset).semantic_models
        return (*(self.semantic_models or ()), *self.segmenters)


OPEN_VOCAB_LABELS = StageSpec(
    name="open_vocab_labels",
    label="open-vocabulary labels (SSA-engine)",
    description="Open-vocabulary class names for SAM masks, stored masks or superpixels (BLIP, CLIP, CLIPSeg)",
    options=EngineOptions,
    batch_size=2,
    positional=("label_field", "masks"),
    aliases={
        "semantic_fields": "baseline_fields",
        "preset": "model_preset",
        "mask_preset": "amg_preset",
        "semantic_field": "segmentation_field",
    },
    next_step="browse the labelled masks in the grid; samseg: evaluate IoU of its segmentation field where you have ground truth",
)


def build_engine(
    *,
    model_preset: str = "light",
    clip: Any = None,
    clip_pretrained: str | None = None,
    captioner: Any = None,
    clipseg: Any = None,
    vocabulary: Sequence[str] | None = None,
    device: str | None = None,
    mask_batch_size: int = 32,
    **engine_options: Any,
) -> OpenVocabEngine:
    """Returns an :class:`~samseg_core.engine.OpenVocabEngine` with the preset's models, each overridable.

    Every model goes through :func:`~samseg_core.models.resolve.resolve_model`, so one that cannot be loaded
    raises :class:`~samseg_core.models.resolve.ModelLoadError` naming its parameter.

    Args:
        model_preset: "light" (CLIP ViT-B/32, BLIP base) or "full" (CLIP ViT-L/14, BLIP large); CLIPSeg
            rd64-refined in both (``preset`` is accepted for one release).
        clip: an open_clip model name, directory, ``module:function`` spec, built model or ClipClassifier.
        clip_pretrained: the pretrained tag or checkpoint file for a CLIP model name (default: the preset's).
        captioner: a BLIP hub id, directory, spec, ``(model, processor)`` or Captioner; not loaded in
            fixed-vocabulary mode.
        clipseg: a CLIPSeg hub id, directory, spec, ``(model, processor)`` or ClipSegScorer.
        vocabulary: fixed-vocabulary mode (no captioning); each item is one class name.
        device: where the models run.
        mask_batch_size: crops (and CLIPSeg pairs) per model call.
        engine_options: further :class:`OpenVocabEngine` arguments (topk, crop scales, min_area, ...).
    """
    if "preset" in engine_options:
        warnings.warn("build_engine(): 'preset' is now called 'model_preset'", FutureWarning, stacklevel=2)
        model_preset = engine_options.pop("preset")
    defaults = engine_preset(model_preset)
    if clip is None:
        clip, clip_pretrained = defaults.clip, clip_pretrained or defaults.clip_pretrained
    clip_model = resolve_model(CLIP, clip, device=device, param="clip", pretrained=clip_pretrained)
    clipseg_spec = clipseg if clipseg is not None else defaults.clipseg
    clipseg_model = resolve_model(CLIPSEG, clipseg_spec, device=device, param="clipseg")
    captioner_model = None
    if vocabulary is None:
        captioner_spec = captioner if captioner is not None else defaults.captioner
        captioner_model = resolve_model(CAPTIONER, captioner_spec, device=device, param="captioner")
    return OpenVocabEngine(
        clip_model,
        clipseg_model,
        captioner_model,
        vocabulary=list(vocabulary) if vocabulary is not None else None,
        batch_size=mask_batch_size,
        **engine_options,
    )


def _branch_name(spec: Any) -> str:
    if isinstance(spec, (str, os.PathLike)):
        return os.fspath(spec)
    return type(getattr(spec, "model", spec)).__name__


def _segmenters(specs: Sequence[Any], device: Any) -> list[tuple[str, Any]]:
    """The close-set segmenters, loaded (a model that cannot be loaded raises ModelLoadError)."""
    return [
        (_branch_name(spec), resolve_model(SEMANTIC, spec, device=device, param="semantic_models"))
        for spec in specs
    ]


def _stored_branch(item: SampleItem, field_name: str, targets: Mapping[int, str]) -> SemanticBranch | None:
    labels = read_segmentation(item.inputs.get(field_name))
    if labels is None:
        return None
    shape = item.image.shape[:2]
    if labels.shape != shape:
        labels = resize_mask_nearest(labels, shape)
    return SemanticBranch(field_name, labels, targets)


def _detections(proposals: Any, labels: list[MaskLabel], keep_skipped: bool) -> Any:
    keep = np.array([keep_skipped or label.skipped_reason is None for label in labels], dtype=bool)
    index = np.flatnonzero(keep)
    chosen = [labels[i] for i in index]
    attributes = {
        "class_proposals": [label.class_proposals for label in chosen],
        "proposal_scores": [[round(s, 6) for s in label.proposal_scores] for label in chosen],
        "caption": [label.caption for label in chosen],
        "skipped_reason": [label.skipped_reason for label in chosen],
        "area": [label.area for label in chosen],
    }
    for name in ("predicted_iou", "stability_score"):
        values = getattr(proposals, name, None)
        if values is not None and len(values) == len(labels):
            attributes[name] = [float(v) for v in np.asarray(values)[index]]
    return detections_from_masks(
        np.asarray(proposals.masks, dtype=bool)[index],
        [label.class_name for label in chosen],
        confidences=[label.confidence for label in chosen],
        attributes=attributes,
    )


def _export_json(
    json_dir: str | os.PathLike, item: SampleItem, proposals: Any, labels: list[MaskLabel]
) -> None:
    """Writes ``<json_dir>/<file stem>_<sample id>.json``; masks that got no class have ``class_name`` null."""
    from samseg_core.ssa_format import write_ssa_json

    file_name = os.path.basename(item.filepath)
    write_ssa_json(
        os.path.join(os.fspath(json_dir), f"{os.path.splitext(file_name)[0]}_{item.id}.json"),
        proposals,
        image={"image_id": item.id, "file_name": file_name},
        class_names=[None if label.skipped_reason else label.class_name for label in labels],
        class_proposals=[label.class_proposals for label in labels],
    )


def _sample_stats(labels: list[MaskLabel]) -> dict[str, Any]:
    """One sample's statistics, handed to the runner under :data:`STATS` (it collects them once per sample)."""
    named = [label.class_name for label in labels if label.skipped_reason is None]
    return {
        "masks": len(labels),
        "labelled": len(named),
        "skipped": len(labels) - len(named),
        "names": sorted(set(named)),
    }


@dataclass
class _Totals:
    """Run totals, fed by the runner's ``on_result`` once per written sample (never from ``process``)."""

    counts: dict[str, int] = field(default_factory=lambda: {"masks": 0, "labelled": 0, "skipped": 0})
    names: set[str] = field(default_factory=set)

    def add(self, sample_id: str, stats: Mapping[str, Any]) -> None:
        """Adds one written sample's statistics."""
        for key in self.counts:
            self.counts[key] += int(stats[key])
        self.names.update(stats["names"])


@dataclass
class _Labeller:
    """The per-batch work of :func:`open_vocab_labels`, with every model already loaded."""

    plan: StagePlan
    options: EngineOptions
    engine: OpenVocabEngine
    segmenters: list[tuple[str, Any]]
    source: Any
    field_targets: dict[str, dict[int, str]]

    def branches(self, items: list[SampleItem]) -> list[list[SemanticBranch]]:
        """Each item's close-set branches: the stored baseline fields it has, then the segmenters' maps."""
        fields = self.options.baseline_fields
        out = [
            [b for b in (_stored_branch(item, f, self.field_targets[f]) for f in fields) if b is not None]
            for item in items
        ]
        images = [item.image for item in items]
        for name, segmenter in self.segmenters:
            for item_branches, prediction in zip(out, segmenter.predict(images)):
                item_branches.append(SemanticBranch(name, prediction.labels, segmenter.id2label))
        return out

    def class_ids(self, labels: list[list[MaskLabel]]) -> dict[str, int]:
        """Ids of the batch's class names in the merged segmentation, claimed in the database."""
        if not self.options.segmentation_field:
            return {}
        named = {label.class_name for image in labels for label in image if label.skipped_reason is None}
        return claim_class_ids(self.plan.dataset, self.options.segmentation_field, sorted(named))

    def process(self, items: list[SampleItem]) -> list[StageResult]:
        """Labels every mask of a batch of samples; one result (with its :data:`STATS`) per sample."""
        proposals = [self.source.proposals(item) for item in items]
        labels = self.engine.label_masks(
            [item.image for item in items], [p.masks for p in proposals], self.branches(items)
        )
        ids = self.class_ids(labels)
        return [self.result(*args, ids) for args in zip(items, proposals, labels)]

    def result(
        self, item: SampleItem, proposals: Any, labels: list[MaskLabel], ids: Mapping[str, int]
    ) -> dict[str, Any]:
        """One sample's field values and statistics; writes its JSON file when asked to."""
        options = self.options
        result: dict[str, Any] = {options.label_field: _detections(proposals, labels, options.keep_skipped)}
        if options.segmentation_field:
            painted = [0 if label.skipped_reason else ids[label.class_name] for label in labels]
            stack = np.asarray(proposals.masks, dtype=bool).reshape(-1, *item.image.shape[:2])
            class_map = paint_class_map(stack, painted)
            result[options.segmentation_field] = self.plan.segmentation(
                options.segmentation_field, class_map, item.id
            )
        if options.json_dir is not None:
            _export_json(options.json_dir, item, proposals, labels)
        result[STATS] = _sample_stats(labels)
        return result


def _load(plan: StagePlan, options: EngineOptions) -> _Labeller:
    """Loads every model and plans the mask targets; raises ModelLoadError before anything is written."""
    device = plan.run.device
    engine = build_engine(
        model_preset=options.model_preset,
        clip=options.clip,
        clip_pretrained=options.clip_pretrained,
        captioner=options.captioner,
        clipseg=options.clipseg,
        vocabulary=options.vocabulary,
        device=device,
        mask_batch_size=options.mask_batch_size,
        topk=options.topk,
        crop_scale_caption=options.crop_scale_caption,
        crop_scale_clip=options.crop_scale_clip,
        crop_scale_clipseg=options.crop_scale_clipseg,
        min_area=options.min_area,
    )
    segmenters = _segmenters(options.semantic_model_specs(), device)
    source = mask_source_for(options, device)
    if options.segmentation_field:
        plan.add_mask_targets(options.segmentation_field, {0: UNLABELED}, param="segmentation_field")
    targets = {name: mask_targets_of(plan.samples, name) for name in options.baseline_fields}
    return _Labeller(plan, options, engine, segmenters, source, targets)


@stage(OPEN_VOCAB_LABELS)
def open_vocab_labels(plan: StagePlan, options: EngineOptions) -> RunSummary:
    """Gives every mask of every sample an open-vocabulary class name (SSA-engine) and stores ``fo.Detections``.

    Per mask: close-set proposals (plurality class of each close-set branch inside the mask: the
    ``baseline_fields`` and the segmenters), noun phrases of a BLIP caption of the enlarged crop (or the fixed
    ``vocabulary``); CLIP keeps the top-k of their union, CLIPSeg picks one inside the mask. All crops of a batch
    of images go through each model in batches of ``mask_batch_size``. With ``segmentation_field`` the labelled
    masks are also painted into one class map; ``mask_targets[segmentation_field]`` gains each new name once
    (id 0 is ``unlabeled``), claimed in the database so that a name keeps its id across samples, runs and
    shards running at the same time. Every model is loaded before anything is written.

    Returns:
        a :class:`~samseg_core.runner.RunSummary`; ``extra`` holds ``masks``, ``labelled`` and ``skipped`` (over
        the written samples), ``classes`` (distinct class names among them) and ``model_calls`` (forward passes
        per model part).
    """
    labeller = _load(plan, options)
    if options.json_dir is not None:
        os.makedirs(options.json_dir, exist_ok=True)
    totals = _Totals()
    summary = run_stage(plan, process=labeller.process, on_result=totals.add)
    summary.extra.update(totals.counts)
    summary.extra["classes"] = len(totals.names)
    summary.extra["model_calls"] = labeller.engine.model_calls()
    summary.extra.update(mask_source_summary(labeller.source))
    return summary
