"""Options shared by the stages that use SAM or a mask source, declared once and inherited by their options.

:class:`SamOptions` (the SAM model, its checkpoint, a shared embedding cache) is used by refinement and the
prompt study; :class:`MaskSourceOptions` (SAM's automatic mask generator and its settings, superpixels, or masks
stored in a Detections field) by voting and the engine. :func:`embedding_cache_for` and :func:`mask_source_for`
turn them into the objects the stages use, with one rule for the cache everywhere: passing ``cache=`` uses the
cache's model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from samseg_core.errors import StageParameterError
from samseg_core.models.sam_family import SAM_HUB_IDS, SAM_TYPES
from samseg_core.stages.options import DETECTIONS, StageOptions, input_field, option

DEFAULT_SAM = "vit_b"
#: What the forms offer in the SAM model field (any other spec may be typed in).
SAM_SUGGESTIONS = (*SAM_TYPES, *SAM_HUB_IDS)
MaskSourceName = Literal["sam", "superpixels", "felzenszwalb", "slic", "field"]
AmgPreset = Literal["ssa", "fast", "default"]

_SAM = {"masks": ("sam",)}
_SUPERPIXELS = {"masks": ("superpixels", "felzenszwalb", "slic")}

#: The automatic mask generator settings declared below (None: the preset's value).
AMG_SETTINGS = (
    "points_per_side",
    "points_per_batch",
    "pred_iou_thresh",
    "stability_score_thresh",
    "stability_score_offset",
    "box_nms_thresh",
    "crop_n_layers",
    "crop_nms_thresh",
    "crop_overlap_ratio",
    "crop_n_points_downscale_factor",
    "min_mask_region_area",
)


def mask_source_here() -> tuple[str, str]:
    """``("sam", "")`` when SAM's default model has a checkpoint on this machine (nothing is downloaded to find
    out), else ``("superpixels", why)``: the mask source a form should start with here."""
    from samseg_core.models.sam import SamCheckpointNotFound, resolve_sam_checkpoint

    try:
        resolve_sam_checkpoint(DEFAULT_SAM, allow_download=False)
    except SamCheckpointNotFound:
        return "superpixels", (
            f"No SAM {DEFAULT_SAM} checkpoint on this machine ($SAMSEG_SAM_CHECKPOINT, FiftyOne's model zoo, "
            "samseg's cache), so the mask source starts as weight-free superpixels. To use SAM, choose 'sam' "
            "and a SAM model you have (a type with its 'SAM checkpoint', a hub id in your Hugging Face cache, or a "
            "directory)."
        )
    return "sam", ""


@dataclass(frozen=True)
class SamOptions(StageOptions):
    """The SAM model of a stage, and an embedding cache shared with other stages."""

    sam: Any = option(
        DEFAULT_SAM, "SAM-family model: vit_b / vit_l / vit_h (segment_anything), a .pth checkpoint, a hub id "
        "(facebook/sam2.1-hiera-large, facebook/sam-vit-huge, syscv-community/sam-hq-vit-huge, ...), a "
        "save_pretrained directory, a module:function spec, or a built model", label="SAM model",
        suggestions=SAM_SUGGESTIONS,
    )  # fmt: skip
    sam_checkpoint: str | None = option(
        None, "Checkpoint file for a SAM type; else $SAMSEG_SAM_CHECKPOINT, FiftyOne's model zoo, samseg's cache, "
        "then download", label="SAM checkpoint (optional)",
    )  # fmt: skip
    cache: Any = option(
        None, "An EmbeddingCache shared with other stages of the run; its SAM is used", python_only=True
    )


@dataclass(frozen=True)
class MaskSourceOptions(SamOptions):
    """Where the masks come from: SAM's automatic mask generator, superpixels, or a stored Detections field."""

    masks: MaskSourceName = option(
        "sam", "sam: SAM's automatic masks; superpixels / felzenszwalb / slic: weight-free; field: masks_field",
        label="Mask source", form_default=lambda: mask_source_here(),
    )  # fmt: skip
    masks_field: str | None = input_field(
        None, DETECTIONS, "Detections field with instance masks (masks='field', or masks='field:<name>')",
        required=False, label="Stored masks field", show_if={"masks": ("field",)},
    )  # fmt: skip
    amg_preset: AmgPreset = option(
        "ssa", "Generator settings: ssa (SSA's: 64 points, 1 crop layer), fast (32 points, no crops), or "
        "default (segment_anything's)", label="Generator preset", show_if=_SAM,
    )  # fmt: skip
    points_per_side: int | None = option(
        None, "Point grid side (empty: the preset's)", ge=1, le=256, show_if=_SAM
    )
    points_per_batch: int | None = option(
        None, "Prompts decoded per batch (empty: the preset's); lower it when memory runs out", ge=1, le=4096,
        show_if=_SAM,
    )  # fmt: skip
    pred_iou_thresh: float | None = option(
        None,
        "Keep masks whose predicted IoU reaches this (empty: the preset's)",
        ge=0.0,
        le=1.0,
        show_if=_SAM,
    )
    stability_score_thresh: float | None = option(
        None,
        "Keep masks whose stability score reaches this (empty: the preset's)",
        ge=0.0,
        le=1.0,
        show_if=_SAM,
    )
    stability_score_offset: float | None = option(
        None, "Logit offset of the stability score (empty: the preset's)", ge=0.0, le=10.0, show_if=_SAM
    )
    box_nms_thresh: float | None = option(
        None, "Box IoU above which duplicate masks are suppressed (empty: the preset's)", ge=0.0, le=1.0,
        show_if=_SAM,
    )  # fmt: skip
    crop_n_layers: int | None = option(
        None, "Layers of image crops (empty: the preset's)", ge=0, le=4, show_if=_SAM
    )
    crop_nms_thresh: float | None = option(
        None, "Box IoU for suppression across crops (empty: the preset's)", ge=0.0, le=1.0, show_if=_SAM
    )
    crop_overlap_ratio: float | None = option(
        None, "Overlap of neighbouring crops (empty: the preset's)", ge=0.0, le=0.99, show_if=_SAM
    )
    crop_n_points_downscale_factor: int | None = option(
        None, "Point grid downscale per crop layer (empty: the preset's)", ge=1, le=16, show_if=_SAM
    )
    min_mask_region_area: int | None = option(
        None, "Remove mask islands and holes below this many pixels (empty: the preset's)", ge=0, show_if=_SAM
    )
    superpixel_max_side: int = option(
        1024, "Superpixels run on a copy with at most this longest side; labels are upsampled to the image",
        ge=64, le=65536, show_if=_SUPERPIXELS,
    )  # fmt: skip
    mask_options: Mapping[str, Any] | None = option(
        None,
        "Further keyword arguments of the mask source (e.g. superpixel n_segments or scale)",
        python_only=True,
    )
    mask_source: Any = option(
        None, "A built MaskSource (masks=<MaskSource> lands here); it replaces masks and their settings",
        python_only=True,
    )  # fmt: skip

    @classmethod
    def normalize(cls, values: dict[str, Any]) -> dict[str, Any]:
        """``masks="field:<name>"`` becomes ``masks="field", masks_field=<name>``; a MaskSource object is kept
        as ``mask_source``; ``amg_preset=None`` (the old ``preset=None``) is segment_anything's own settings."""
        if "amg_preset" in values and values["amg_preset"] is None:
            values["amg_preset"] = "default"
        masks = values.get("masks")
        if masks is not None and not isinstance(masks, str):
            values["mask_source"] = values.pop("masks")
            return values
        if isinstance(masks, str) and masks.startswith("field:"):
            name = masks.removeprefix("field:")
            if values.get("masks_field") not in (None, name):
                raise StageParameterError(
                    "masks",
                    f"'{masks}' and masks_field='{values['masks_field']}' disagree",
                    "pass one of them",
                )
            values.update(masks="field", masks_field=name)
        return values

    def amg_overrides(self) -> dict[str, Any]:
        """The generator settings given explicitly (None: the preset's)."""
        return {name: getattr(self, name) for name in AMG_SETTINGS if getattr(self, name) is not None}

    def check(self, samples: Any) -> None:
        """``masks="field"`` needs ``masks_field``; ``mask_options`` may not repeat a declared option."""
        if self.masks == "field" and not self.masks_field:
            raise StageParameterError(
                "masks_field",
                "masks='field' needs the Detections field holding the masks",
                "pass masks_field=<field>",
            )
        repeated = sorted(set(self.mask_options or {}) & {*AMG_SETTINGS, "superpixel_max_side"})
        if repeated:
            raise StageParameterError(
                "mask_options", f"{repeated} are options of their own", "pass them directly"
            )


def embedding_cache_for(options: SamOptions, device: Any) -> Any:
    """The EmbeddingCache of a stage: the given ``cache`` (whose model is then the stage's SAM), or a new one
    around the SAM that ``sam`` / ``sam_checkpoint`` name."""
    from samseg_core.models.resolve import SAM, resolve_model
    from samseg_core.sam_embedding import EmbeddingCache

    if options.cache is not None:
        if options.sam not in (DEFAULT_SAM, None) and not options.cache.owns(options.sam):
            raise StageParameterError(
                "sam",
                "sam and cache name different models",
                "pass only cache= (its SAM is used), or only sam=",
            )
        return options.cache
    sam = resolve_model(SAM, options.sam, device=device, param="sam", checkpoint=options.sam_checkpoint)
    return EmbeddingCache(sam)


def mask_source_for(options: MaskSourceOptions, device: Any) -> Any:
    """The MaskSource that ``masks`` and its settings name (SAM's generator shares the stage's cache)."""
    from samseg_core.mask_sources import DetectionsSource, SamAutomaticSource, SuperpixelSource

    if options.mask_source is not None:
        return options.mask_source
    extra = dict(options.mask_options or {})
    try:
        if options.masks == "sam":
            cache = embedding_cache_for(options, device)
            preset = None if options.amg_preset == "default" else options.amg_preset
            return SamAutomaticSource(
                cache.model, preset=preset, cache=cache, **options.amg_overrides(), **extra
            )
        if options.masks == "field":
            if extra:
                raise TypeError(f"stored masks take no mask_options, got {sorted(extra)}")
            return DetectionsSource(options.masks_field)
        method = "felzenszwalb" if options.masks == "superpixels" else options.masks
        return SuperpixelSource(method, max_side=options.superpixel_max_side, **extra)
    except TypeError as err:
        raise StageParameterError(
            "mask_options", str(err), "pass only settings the mask source has"
        ) from None


def mask_source_summary(source: Any) -> dict[str, Any]:
    """What a run summary says about SAM's automatic masks: the model, and any out-of-memory halvings of
    ``points_per_batch`` (empty for other mask sources)."""
    from samseg_core.mask_sources import SamAutomaticSource
    from samseg_core.models.sam_family import describe_sam

    if not isinstance(source, SamAutomaticSource):
        return {}
    extra: dict[str, Any] = {"sam_model": describe_sam(source.model)}
    if source.oom_halvings:
        extra["points_per_batch_halved"] = (
            f"{len(source.oom_halvings)}x after CUDA out-of-memory, now {source.oom_halvings[-1]}"
        )
    return extra
