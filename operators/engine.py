"""Operator: open-vocabulary class names for masks (SSA-engine), ``open_vocab_labels``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import fiftyone.operators.types as types

from samseg_core.engine import ENGINE_PRESETS
from samseg_core.mask_sources import SUPERPIXEL_METHODS
from samseg_core.stages.engine import DEFAULT_LABEL_FIELD, open_vocab_labels

from . import common

BUILTIN_MASK_SOURCES = ["sam", *SUPERPIXEL_METHODS]


def _split(text: Any) -> list[str]:
    """Comma-separated text (or a list) -> stripped non-empty strings."""
    if text is None:
        return []
    items = text if isinstance(text, (list, tuple)) else str(text).split(",")
    return [s.strip() for s in items if str(s).strip()]


def _mask_source_choices(ctx: Any) -> list[str]:
    return BUILTIN_MASK_SOURCES + [f"field:{name}" for name in common.detections_fields(ctx)]


def _engine_inputs(ctx: Any, inputs: types.Object) -> None:
    choices = _mask_source_choices(ctx)
    default_source = "field:ssa_masks" if "field:ssa_masks" in choices else "sam"
    common.add_choice_input(
        inputs,
        "masks",
        "Masks to label",
        choices,
        default_source,
        description="SAM automatic masks, superpixels, or the masks of a stored Detections field",
    )
    if (ctx.params.get("masks") or default_source) == "sam":
        common.add_amg_inputs(ctx, inputs)
    common.add_field_input(inputs, "label_field", "Output Detections field", DEFAULT_LABEL_FIELD)
    common.add_choice_input(
        inputs,
        "model_preset",
        "Model preset",
        list(ENGINE_PRESETS),
        "light",
        description="light: CLIP ViT-B/32 + BLIP base; full: CLIP ViT-L/14 + BLIP large (as SSA)",
    )
    inputs.view("vocab_header", types.Header(label="Vocabularies", divider=True))
    inputs.str(
        "vocabulary",
        label="Fixed vocabulary (optional)",
        default="",
        required=False,
        description="Comma-separated class names; when set, no captions are generated",
    )
    inputs.str(
        "semantic_fields",
        label="Stored segmentations as close-set proposals (optional)",
        default="",
        required=False,
        description=f"Comma-separated fo.Segmentation fields; available: {', '.join(common.semantic_fields(ctx))}",
    )
    inputs.str(
        "semantic_models",
        label="Segmenters run on the fly (optional)",
        default="",
        required=False,
        description="Comma-separated hub ids / directories / specs; empty: the preset's if no stored field "
        "is given; 'none' for none",
    )
    inputs.view("models_header", types.Header(label="Model overrides (optional)", divider=True))
    for name, label in (
        ("clip", "CLIP (open_clip name, directory or module:function)"),
        ("clip_pretrained", "CLIP pretrained tag or checkpoint file"),
        ("captioner", "BLIP captioner (hub id, directory or module:function)"),
        ("clipseg", "CLIPSeg (hub id, directory or module:function)"),
    ):
        inputs.str(name, label=label, default="", required=False)
    inputs.view("engine_header", types.Header(label="Engine", divider=True))
    inputs.int("topk", label="Candidates kept by CLIP (top-k)", default=3, required=False)
    inputs.int("min_area", label="Minimum mask area (pixels)", default=100, required=False)
    inputs.int("mask_batch_size", label="Crops per model call", default=32, required=False)
    inputs.str(
        "semantic_field",
        label="Merged segmentation field (optional)",
        default="",
        required=False,
        description="fo.Segmentation of the labelled masks; class ids stay the same across the dataset",
    )
    inputs.str("json_dir", label="SSA-format JSON directory (optional)", default="", required=False)
    common.add_run_inputs(inputs, batch_size=2)


def engine_kwargs(params: dict[str, Any]) -> dict[str, Any]:
    """Parses the form's engine inputs into :func:`open_vocab_labels` keyword arguments."""
    models = _split(params.get("semantic_models"))
    kwargs: dict[str, Any] = {
        "label_field": params.get("label_field") or DEFAULT_LABEL_FIELD,
        "masks": params.get("masks") or "sam",
        "preset": params.get("model_preset") or "light",
        "vocabulary": _split(params.get("vocabulary")) or None,
        "semantic_fields": _split(params.get("semantic_fields")),
        "semantic_models": () if models == ["none"] else (models or None),
        "topk": int(params.get("topk") or 3),
        "min_area": int(params.get("min_area") if params.get("min_area") is not None else 100),
        "mask_batch_size": int(params.get("mask_batch_size") or 32),
        "semantic_field": params.get("semantic_field") or None,
        "json_dir": params.get("json_dir") or None,
    }
    for name in ("clip", "clip_pretrained", "captioner", "clipseg"):
        kwargs[name] = params.get(name) or None
    if kwargs["masks"] == "sam":
        sam = common.amg_kwargs(params)
        kwargs.update(
            sam=sam.pop("sam"), sam_checkpoint=sam.pop("sam_checkpoint"), mask_preset=sam.pop("preset")
        )
        kwargs["mask_options"] = sam  # the generator settings the form set
    return kwargs


class OpenVocabLabels(common.StageOperator):
    """Labels masks with open-vocabulary class names (close-set + BLIP nouns, CLIP top-k, CLIPSeg decision)."""

    NAME = "open_vocab_labels"
    LABEL = "open-vocabulary labels (SSA-engine)"
    DESCRIPTION = (
        "Give every mask a class name: BLIP caption nouns and close-set proposals, CLIP top-k, CLIPSeg"
    )

    def build_form(self, ctx: Any, inputs: types.Object) -> None:
        _engine_inputs(ctx, inputs)

    def execute(self, ctx: Any) -> dict[str, Any]:
        summary = open_vocab_labels(
            common.target_view(ctx), **engine_kwargs(ctx.params), **common.run_kwargs(ctx)
        )
        return common.finish(ctx, summary)

    def __call__(
        self,
        sample_collection: Any,
        label_field: str = DEFAULT_LABEL_FIELD,
        masks: str = "sam",
        preset: str = "light",
        vocabulary: Sequence[str] | None = None,
        semantic_fields: Sequence[str] = (),
        semantic_models: Sequence[str] | None = None,
        clip: str | None = None,
        clip_pretrained: str | None = None,
        captioner: str | None = None,
        clipseg: str | None = None,
        sam: str | None = None,
        sam_checkpoint: str | None = None,
        mask_preset: str | None = "ssa",
        mask_options: dict[str, Any] | None = None,
        topk: int = 3,
        min_area: int = 100,
        semantic_field: str | None = None,
        json_dir: str | None = None,
        batch_size: int = 2,
        mask_batch_size: int = 32,
        device: str | None = None,
        skip_existing: bool = False,
        overwrite: bool = False,
        delegate: bool = False,
    ) -> Any:
        """Labels the masks of ``sample_collection`` from Python, through the operator.

        Models are named by strings (hub ids, local directories, open_clip names or ``module:function`` specs).

        Args:
            sample_collection: a dataset or view.
            label_field: output ``fo.Detections`` field.
            masks: ``"sam"``, ``"superpixels"`` or ``"field:<Detections field>"``.
            preset: ``"light"`` or ``"full"``.
            vocabulary: fixed vocabulary (no captioning) or None.
            semantic_fields: stored ``fo.Segmentation`` fields as close-set proposals.
            semantic_models: segmenters run on the fly; None: the preset's unless ``semantic_fields``; ``[]``: none.
            clip: CLIP override.
            clip_pretrained: CLIP pretrained tag or checkpoint file.
            captioner: BLIP override.
            clipseg: CLIPSeg override.
            sam: SAM type / checkpoint / spec for ``masks="sam"``.
            sam_checkpoint: explicit SAM checkpoint file.
            mask_preset: SAM generator preset (``"ssa"``, ``"fast"``, None for segment_anything's defaults).
            mask_options: SAM generator settings shown in the form (``points_per_side``, ``pred_iou_thresh``, ...).
            topk: candidates CLIP keeps.
            min_area: masks below this many pixels are not labelled.
            semantic_field: optional merged ``fo.Segmentation`` field.
            json_dir: optional SSA-format JSON directory.
            batch_size: images per batch.
            mask_batch_size: crops per model call.
            device: ``cuda``, ``cuda:N`` or ``cpu`` (default: auto).
            skip_existing: only process samples without ``label_field``.
            overwrite: replace existing values.
            delegate: queue a delegated operation instead of running now.

        Returns:
            the run summary dict, or the delegated operation's ExecutionResult when ``delegate``.
        """
        params = dict(
            label_field=label_field,
            masks=masks,
            model_preset=preset,
            vocabulary=",".join(vocabulary or []),
            semantic_fields=",".join(semantic_fields),
            semantic_models="none"
            if semantic_models is not None and not semantic_models
            else ",".join(semantic_models or []),
            clip=clip or "",
            clip_pretrained=clip_pretrained or "",
            captioner=captioner or "",
            clipseg=clipseg or "",
            sam=sam or "",
            sam_checkpoint=sam_checkpoint or "",
            preset=mask_preset or common.NO_AMG_PRESET,
            **dict(mask_options or {}),
            topk=topk,
            min_area=min_area,
            semantic_field=semantic_field or "",
            json_dir=json_dir or "",
            batch_size=batch_size,
            mask_batch_size=mask_batch_size,
            device=device or "",
            skip_existing=skip_existing,
            overwrite=overwrite,
        )
        return common.execute_from_sdk(self, sample_collection, params, delegate=delegate)


OPERATORS = [OpenVocabLabels]
