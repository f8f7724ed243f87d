"""The SSA-engine on tiny random-init CLIP / BLIP / CLIPSeg: candidates, skips, ties, batching, loaders."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from samseg_core.engine import (
    OpenVocabEngine,
    SemanticBranch,
    assign_class_ids,
    close_set_votes,
    crop_boxes,
    paint_class_map,
)
from samseg_core.models.caption import load_captioner
from samseg_core.models.clip import load_clip
from samseg_core.models.clipseg import load_clipseg
from samseg_core.testing import tiny_engine_models as tiny


@pytest.fixture(scope="module")
def raw_models(tmp_path_factory):
    """Tiny models built once per module; every test wraps them afresh (fresh call counters and caches)."""
    root = tmp_path_factory.mktemp("tiny-engine")
    return {
        "clip": tiny.tiny_open_clip(),
        "blip": tiny.tiny_blip(directory=root / "blip-vocab"),
        "clipseg": tiny.tiny_clipseg(directory=root / "clip-bpe"),
    }


def make_engine(raw_models, *, caption: bool = True, **kwargs) -> OpenVocabEngine:
    clip = load_clip(raw_models["clip"], device="cpu")
    clipseg = load_clipseg(raw_models["clipseg"], device="cpu")
    captioner = load_captioner(raw_models["blip"], device="cpu", max_new_tokens=8) if caption else None
    return OpenVocabEngine(clip, clipseg, captioner, **kwargs)


def random_image(height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def box_masks(n: int, height: int = 48, width: int = 64, side: int = 12) -> np.ndarray:
    """n square masks at different places (each side x side pixels)."""
    masks = np.zeros((n, height, width), dtype=bool)
    for i in range(n):
        y, x = (3 * i) % (height - side), (5 * i) % (width - side)
        masks[i, y : y + side, x : x + side] = True
    return masks


def test_mask_with_zero_candidates_is_unknown_with_a_reason(raw_models):
    engine = make_engine(raw_models, caption=False)
    [[label]] = engine.label_masks([random_image()], [box_masks(1)])
    assert label.class_name == "unknown"
    assert "no candidate" in label.skipped_reason
    assert engine.model_calls()["clipseg_decoder"] == 0


def test_mask_with_one_candidate_gets_it_from_a_one_text_clipseg_call(raw_models):
    engine = make_engine(raw_models, vocabulary=["dog"])
    [[label]] = engine.label_masks([random_image()], [box_masks(1)])
    assert (label.class_name, label.class_proposals, label.skipped_reason) == ("dog", ["dog"], None)
    assert 0.0 < label.confidence < 1.0
    assert engine.model_calls()["clipseg_decoder"] == 1


def test_mask_with_many_candidates_keeps_clip_topk_and_clipseg_picks_among_them(raw_models):
    vocabulary = ["dog", "cat", "horse", "car", "tree"]
    engine = make_engine(raw_models, vocabulary=vocabulary, topk=3)
    [[label]] = engine.label_masks([random_image()], [box_masks(1)])
    assert len(label.class_proposals) == 3 and set(label.class_proposals) <= set(vocabulary)
    assert label.proposal_scores == sorted(label.proposal_scores, reverse=True)
    assert label.class_name == label.class_proposals[int(np.argmax(label.clipseg_scores))]
    assert label.confidence == max(label.clipseg_scores)


def test_fixed_vocabulary_mode_skips_captioning(raw_models):
    engine = make_engine(raw_models, vocabulary=["dog", "cat"])
    [[label]] = engine.label_masks([random_image()], [box_masks(1)])
    assert label.caption is None and engine.model_calls()["caption"] == 0


def test_caption_nouns_are_candidates(raw_models):
    engine = make_engine(raw_models, topk=50)
    [[label]] = engine.label_masks([random_image()], [box_masks(1)])
    from samseg_core.nouns import noun_phrases

    assert label.caption and set(label.class_proposals) == set(noun_phrases(label.caption))


def test_masks_below_min_area_are_skipped_with_a_reason(raw_models):
    masks = box_masks(2)
    masks[1] = False
    masks[1, :3, :3] = True  # 9 pixels
    engine = make_engine(raw_models, vocabulary=["dog"], min_area=20)
    [[big, small]] = engine.label_masks([random_image()], [masks])
    assert big.class_name == "dog" and big.skipped_reason is None
    assert small.class_name == "unknown" and small.skipped_reason == "area 9 < min_area 20"


def test_close_set_proposal_of_a_branch_becomes_the_label(raw_models):
    image, masks = random_image(), box_masks(1)
    labels = np.where(masks[0], 7, 0)
    branch = SemanticBranch("coco", labels, {0: "wall-other-merged", 7: "traffic_light"})
    engine = make_engine(raw_models, caption=False)
    [[label]] = engine.label_masks([image], [masks], [[branch]])
    assert (label.close_set, label.class_name) == (["traffic light"], "traffic light")


def test_model_calls_grow_with_batches_not_masks(raw_models):
    batch_size, image = 8, random_image()
    calls = {}
    for n in (10, 30):
        engine = make_engine(raw_models, vocabulary=["dog", "cat", "car"], batch_size=batch_size)
        engine.label_masks([image], [box_masks(n)])
        calls[n] = engine.model_calls()
    for n, counted in calls.items():
        batches = math.ceil(n / batch_size)
        assert counted["clip_image"] == counted["clipseg_vision"] == batches
        assert counted["clipseg_decoder"] == math.ceil(n * 3 / batch_size)
        assert counted["clip_text"] == counted["clipseg_text"] == 1  # one batch of 3 names, not one per mask


def test_caption_calls_grow_with_batches_across_images(raw_models):
    engine = make_engine(raw_models, batch_size=4)
    engine.label_masks([random_image(seed=0), random_image(seed=1)], [box_masks(3), box_masks(3)])
    assert engine.model_calls()["caption"] == math.ceil(6 / 4)


def test_text_embeddings_are_computed_once_per_run(raw_models):
    engine = make_engine(raw_models, vocabulary=["dog", "cat"])
    engine.label_masks([random_image(seed=0)], [box_masks(2)])
    engine.label_masks([random_image(seed=1)], [box_masks(2)])
    assert engine.model_calls()["clip_text"] == 1 and engine.model_calls()["clipseg_text"] == 1


def test_batched_labels_equal_one_mask_at_a_time(raw_models):
    image, masks = random_image(), box_masks(6)
    batched = make_engine(raw_models, batch_size=16).label_masks([image], [masks])[0]
    single = make_engine(raw_models, batch_size=1)
    one_by_one = [single.label_masks([image], [masks[i : i + 1]])[0][0] for i in range(len(masks))]
    assert [(b.caption, b.class_name, b.class_proposals) for b in batched] == [
        (s.caption, s.class_name, s.class_proposals) for s in one_by_one
    ]
    np.testing.assert_allclose([b.confidence for b in batched], [s.confidence for s in one_by_one], atol=1e-4)


def test_clip_score_ties_break_alphabetically(raw_models):
    engine = make_engine(raw_models, vocabulary=["zebra", "cat", "mouse", "ant"], topk=2)
    dim = engine.clip.text_embeddings(["x"]).shape[1]
    engine.clip.text_embeddings = lambda names: torch.ones(len(names), dim) / math.sqrt(dim)
    [[label]] = engine.label_masks([random_image()], [box_masks(1)])
    assert label.class_proposals == ["ant", "cat"]


def test_clipseg_score_ties_go_to_the_better_clip_rank(raw_models):
    engine = make_engine(raw_models, vocabulary=["dog", "cat", "car"])
    engine.clipseg.pair_logits = lambda crops, index, names: torch.zeros(len(names), 8, 8)
    [[label]] = engine.label_masks([random_image()], [box_masks(1)])
    assert label.class_name == label.class_proposals[0]


def test_crops_are_rgb(raw_models):
    seen = []
    engine = make_engine(raw_models)
    caption = engine.captioner.caption
    engine.captioner.caption = lambda crops: seen.append(crops) or caption(crops)
    red = np.zeros((48, 64, 3), dtype=np.uint8)
    red[..., 0] = 255
    engine.label_masks([red], [box_masks(1)])
    crop = seen[0][0]
    assert torch.allclose(crop[0], torch.ones_like(crop[0])) and float(crop[1:].abs().max()) == 0.0


def test_close_set_votes_take_the_plurality_and_ignore_unknown_ids():
    labels = np.array([[1, 1, 2, 255], [2, 2, 2, 255]])
    masks = np.array([[[1, 1, 1, 0], [0, 0, 0, 0]], [[0, 0, 0, 1], [0, 0, 0, 1]]], dtype=bool)
    assert close_set_votes(masks, labels, {1: "cat", 2: "dog"}) == ["cat", None]


def test_close_set_vote_ties_go_to_the_lowest_id():
    labels = np.array([[5, 3]])
    assert close_set_votes(np.ones((1, 1, 2), dtype=bool), labels, {3: "c", 5: "e"}) == ["c"]


def test_crop_boxes_scale_about_the_centre_and_clip_to_the_image():
    boxes = np.array([[10, 10, 19, 19], [0, 0, 9, 9]])  # inclusive: 10x10 boxes
    out = crop_boxes(boxes, 1.6, height=100, width=100)
    np.testing.assert_allclose(out, [[7, 7, 23, 23], [0, 0, 13, 13]])


def test_class_ids_stay_stable_as_names_are_added():
    first = assign_class_ids(["dog", "cat"], {})
    second = assign_class_ids(["bus", "cat", "dog"], first)
    assert first == {0: "unlabeled", 1: "dog", 2: "cat"}
    assert second == {**first, 3: "bus"}


def test_smaller_masks_are_painted_over_larger_ones():
    masks = np.zeros((3, 4, 4), dtype=bool)
    masks[0] = True  # large
    masks[1, :2, :2] = True  # small, on top
    masks[2, 3, 3] = True  # class 0: not painted
    out = paint_class_map(masks, [1, 2, 0])
    assert out[0, 0] == 2 and out[3, 0] == 1 and out[3, 3] == 1


def test_clipseg_pair_logits_equal_the_models_own_forward(raw_models):
    scorer = load_clipseg(raw_models["clipseg"], device="cpu")
    crops = torch.rand(2, 3, scorer.image_size, scorer.image_size)
    index, names = torch.tensor([0, 0, 1]), ["dog", "a red car", "sky"]
    tokens = scorer.processor.tokenizer(names, padding=True, return_tensors="pt")
    with torch.inference_mode():
        reference = scorer.model(**tokens, pixel_values=((crops - scorer.mean) / scorer.std)[index]).logits
    torch.testing.assert_close(scorer.pair_logits(crops, index, names), reference, atol=1e-5, rtol=1e-5)
    assert scorer.vision_calls == 1


def test_clip_tokenizer_built_from_open_clip_bpe_gives_open_clip_ids(tmp_path):
    import open_clip

    text = "a photo of a traffic light."
    ids = tiny.tiny_clip_tokenizer(tmp_path)(text)["input_ids"]
    expected = open_clip.tokenize([text])[0]
    assert ids == expected[: len(ids)].tolist()


def test_loaders_open_saved_directories(tmp_path):
    crops = torch.rand(2, 3, 64, 64)
    clip = load_clip(tiny.save_tiny_clip(tmp_path / "clip"), device="cpu")
    captioner = load_captioner(tiny.save_tiny_blip(tmp_path / "blip"), device="cpu", max_new_tokens=5)
    clipseg = load_clipseg(tiny.save_tiny_clipseg(tmp_path / "clipseg"), device="cpu")
    torch.testing.assert_close(clip.image_embeddings(crops), tiny.tiny_clip().image_embeddings(crops))
    assert captioner.caption(crops) == load_captioner(
        tiny.tiny_blip(), max_new_tokens=5, device="cpu"
    ).caption(crops)
    reference = tiny.tiny_clipseg_scorer().pair_logits(crops, torch.tensor([0, 1]), ["dog", "cat"])
    torch.testing.assert_close(clipseg.pair_logits(crops, torch.tensor([0, 1]), ["dog", "cat"]), reference)


def test_presets_name_the_ssa_models_and_reject_unknown_names():
    from samseg_core.engine import engine_preset

    assert (engine_preset("full").clip, engine_preset("light").clip) == ("ViT-L-14", "ViT-B-32")
    with pytest.raises(ValueError, match="light"):
        engine_preset("huge")


def test_clip_weights_missing_offline_raise_an_error_that_says_what_to_pass():
    with pytest.raises(OSError, match="local checkpoint"):
        load_clip("ViT-B-32", pretrained="openai", device="cpu")
