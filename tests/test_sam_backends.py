"""Every SAM-family backend through the stages: loaded from a saved directory (or built), one embedding cache
shared by refinement, the prompt study, voting and the engine, and the ``sam=`` spec resolution.

Tiny random weights: these tests check that each backend runs every stage and shares its embeddings, never
the quality of the masks.
"""

from __future__ import annotations

import numpy as np
import pytest

import samseg_core as ss
from samseg_core.errors import StageParameterError
from samseg_core.models.promptable import SegmentAnythingBackend, TransformersSamBackend
from samseg_core.models.resolve import ModelLoadError, resolve_model
from samseg_core.models.sam_family import SAM_HUB_IDS, load_sam_family
from samseg_core.sam_embedding import EmbeddingCache
from samseg_core.testing import make_scenes, tiny_sam
from samseg_core.testing import tiny_engine_models as tiny
from samseg_core.testing.tiny_sam_family import save_tiny_transformers_sam

BACKENDS = ["segment_anything", "sam", "sam_hq", "sam2"]
RANDOM_AMG = dict(amg_preset="default", points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)


@pytest.fixture(scope="module")
def saved_dirs(tmp_path_factory):
    """A save_pretrained directory per transformers kind, as a user's downloaded checkpoint would be."""
    root = tmp_path_factory.mktemp("sam_family")
    return {kind: save_tiny_transformers_sam(root / kind, kind=kind) for kind in ("sam", "sam_hq", "sam2")}


def _spec(backend: str, saved_dirs) -> object:
    return tiny_sam() if backend == "segment_anything" else str(saved_dirs[backend])


@pytest.fixture
def scenes():
    """Two scenes (conftest's ``scene_dataset`` is built from these): enough to see one encoder pass per image."""
    return make_scenes(2, seed=3)


@pytest.fixture
def scenes_dataset(scene_dataset):
    return scene_dataset


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_backend_refines_votes_and_labels_with_one_shared_cache(backend, saved_dirs, scenes_dataset):
    model = load_sam_family(_spec(backend, saved_dirs), device="cpu")
    expected = SegmentAnythingBackend if backend == "segment_anything" else TransformersSamBackend
    assert isinstance(model, expected)
    cache = EmbeddingCache(model)
    run = dict(device="cpu", cache=cache)

    refined = ss.refine_with_sam(scenes_dataset, baseline_field="coarse", label_field="refined", **run)
    study = ss.prompt_study(
        scenes_dataset, baseline_field="coarse", gt_field="ground_truth", field_prefix="study", **run
    )
    voted = ss.semantic_voting(
        scenes_dataset, baseline_field="coarse", label_field="voted", masks="sam", **RANDOM_AMG, **run
    )
    labelled = ss.open_vocab_labels(
        scenes_dataset, baseline_fields=["coarse"], semantic_models=(), masks="sam", min_area=1,
        clip=tiny.tiny_clip(), captioner=tiny.tiny_captioner(), clipseg=tiny.tiny_clipseg_scorer(),
        label_field="engine", **RANDOM_AMG, **run,
    )  # fmt: skip

    for summary in (refined, study, voted, labelled):
        assert (summary.processed, summary.failed) == (2, 0), summary
    assert scenes_dataset.count("refined") == scenes_dataset.count("voted") == 2
    assert sum(len(d.detections) for d in scenes_dataset.values("engine")) > 0
    # one encoder pass per image for all four stages: the cache is shared whatever the backend
    assert cache.encoder_calls == 2
    assert refined.extra["encoder_calls"] == 2 and study.extra["encoder_calls"] == 0


@pytest.mark.parametrize("kind", ["sam", "sam_hq", "sam2"])
def test_a_saved_directory_given_as_sam_runs_the_stage(kind, saved_dirs, scenes_dataset):
    summary = ss.refine_with_sam(
        scenes_dataset,
        baseline_field="coarse",
        label_field="refined",
        sam=str(saved_dirs[kind]),
        device="cpu",
    )

    assert (summary.processed, summary.failed) == (2, 0)
    maps = [label.mask for label in scenes_dataset.values("refined")]
    assert all(m.shape == c.mask.shape for m, c in zip(maps, scenes_dataset.values("coarse")))


def test_sam2_mask_prompts_use_the_unpadded_frame(saved_dirs):
    # SAM 2 stretches the image to the square: a mask prompt of a wide image must fill the whole low-res frame
    from samseg_core.prompts import mask_prompt

    model = load_sam_family(str(saved_dirs["sam2"]), device="cpu")
    mask = np.ones((50, 200), bool)
    padded = mask_prompt(mask, encoder_size=model.input_size)
    stretched = mask_prompt(mask, encoder_size=model.input_size, pad=model.pads_input)
    assert not model.pads_input
    assert (padded > 0).mean() == pytest.approx(0.25, abs=0.02)
    assert (stretched > 0).all()


@pytest.mark.parametrize(
    "spec, message",
    [
        ("facebook/sam2.1-hiera-large", "local Hugging Face cache"),
        ("not a model", "names no SAM-family model"),
        ("/no/such/sam_vit_b_01ec64.pth", "No SAM checkpoint found"),
    ],
)
def test_unloadable_specs_name_the_parameter_and_the_remedy(spec, message, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match=message) as caught:
        resolve_model("sam", spec, device="cpu", param="sam")
    assert caught.value.param == "sam" and "hub id" in str(caught.value)


def test_sam2_package_checkpoints_are_refused_with_what_works(tmp_path):
    path = tmp_path / "sam2.1_hiera_large.pt"
    path.write_bytes(b"not read")
    with pytest.raises(ValueError, match="sam2 package.*facebook/sam2.1-hiera-large"):
        load_sam_family(str(path), device="cpu")


def test_a_cache_and_another_sam_are_refused(saved_dirs, scenes_dataset):
    cache = EmbeddingCache(load_sam_family(str(saved_dirs["sam"]), device="cpu"))
    with pytest.raises(StageParameterError, match="different models"):
        ss.refine_with_sam(
            scenes_dataset, baseline_field="coarse", label_field="refined", cache=cache,
            sam=str(saved_dirs["sam2"]), device="cpu",
        )  # fmt: skip
    assert not scenes_dataset.has_field("refined")


def test_forms_offer_the_sam_types_and_hub_ids():
    from samseg_core.stages.registry import get_stage

    stage_spec, _ = get_stage("refine_with_sam")
    spec = next(s for s in stage_spec.stage_options() if s.name == "sam")
    assert {"vit_b", "vit_h", "facebook/sam2.1-hiera-large", "facebook/sam-vit-huge"} <= set(
        spec.info.suggestions
    )
    assert set(SAM_HUB_IDS) <= set(spec.info.suggestions)


def test_voting_summary_names_the_model_and_reports_out_of_memory_halvings(scenes_dataset):
    import torch

    model = load_sam_family(tiny_sam(), device="cpu")
    decode = model.decode

    def decode_or_run_out_of_memory(embeddings, index, points=None, **prompts):
        if points is not None and points.shape[0] > 4:  # as a GPU would, for batches above 4 prompts
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return decode(embeddings, index, points=points, **prompts)

    model.decode = decode_or_run_out_of_memory
    summary = ss.semantic_voting(
        scenes_dataset, baseline_field="coarse", label_field="voted", masks="sam", sam=model, device="cpu",
        **{**RANDOM_AMG, "points_per_batch": 16},
    )  # fmt: skip

    assert (summary.processed, summary.failed) == (2, 0)
    assert summary.extra["sam_model"] == "segment_anything custom"
    assert summary.extra["points_per_batch_halved"] == "2x after CUDA out-of-memory, now 4"
    assert summary.to_dict()["points_per_batch_halved"].startswith("2x")  # what the App's summary shows


def test_the_sam_field_of_every_sam_form_offers_the_suggestions_and_takes_free_text():
    import fiftyone.operators.types as types

    from operators.forms import build_form
    from samseg_core.stages.registry import stage_specs

    with_sam = [spec for spec in stage_specs() if any(o.name == "sam" for o in spec.stage_options())]
    assert {spec.name for spec in with_sam} >= {"refine_with_sam", "prompt_study", "semantic_voting"}
    for spec in with_sam:
        inputs = types.Object()
        build_form(spec, inputs, {})
        view = inputs.properties["sam"].view
        assert isinstance(view, types.AutocompleteView) and view.to_json()["allow_user_input"], spec.name
        offered = [choice.value for choice in view.choices]
        assert offered[:3] == ["vit_b", "vit_l", "vit_h"] and "facebook/sam2.1-hiera-large" in offered
