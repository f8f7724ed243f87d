"""Model loaders: SAM checkpoint resolution and loading, semantic segmenters, tiled upsampling."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from samseg_core.models import (
    SAM_CHECKPOINT_FILES,
    SamCheckpointNotFound,
    SemanticModelNotFound,
    load_sam,
    load_semantic_model,
    resolve_device,
    resolve_sam_checkpoint,
    upsample_argmax,
)
from samseg_core.models import sam as sam_module
from samseg_core.models.semantic import _upsample_argmax_reference
from samseg_core.testing import (
    save_random_sam_checkpoint,
    save_tiny_mask2former,
    save_tiny_segformer,
    tiny_mask2former,
    tiny_mask2former_processor,
    tiny_sam,
    tiny_segformer,
)

ID2LABEL = {0: "background", 1: "sky", 2: "car"}


@pytest.fixture
def isolated_sam_env(monkeypatch, tmp_path):
    """No SAM checkpoint anywhere: empty zoo and cache, no env var."""
    monkeypatch.delenv("SAMSEG_SAM_CHECKPOINT", raising=False)
    monkeypatch.setenv("FIFTYONE_MODEL_ZOO_DIR", str(tmp_path / "zoo"))
    monkeypatch.setenv("SAMSEG_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path


@pytest.fixture(scope="module")
def random_vit_b_checkpoint(tmp_path_factory):
    """A full-size vit_b state dict with random weights, saved under a name without the type."""
    return save_random_sam_checkpoint(tmp_path_factory.mktemp("sam") / "my_sam.pth", "vit_b")


def _fake_file(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not really a checkpoint")
    return path


# ---- device ------------------------------------------------------------------------------------------------


def test_resolve_device_accepts_strings_and_defaults_to_an_available_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")


# ---- SAM checkpoint resolution -----------------------------------------------------------------------------


def test_explicit_checkpoint_path_wins_over_env_var(isolated_sam_env, monkeypatch):
    explicit = _fake_file(isolated_sam_env / "explicit.pth")
    monkeypatch.setenv("SAMSEG_SAM_CHECKPOINT", str(_fake_file(isolated_sam_env / "env.pth")))
    assert resolve_sam_checkpoint("vit_b", explicit, allow_download=False) == explicit


def test_missing_explicit_checkpoint_raises_naming_it(isolated_sam_env):
    missing = isolated_sam_env / "nope.pth"
    with pytest.raises(SamCheckpointNotFound, match="nope.pth"):
        resolve_sam_checkpoint("vit_b", missing, allow_download=False)


def test_env_var_checkpoint_wins_over_zoo(isolated_sam_env, monkeypatch):
    env_file = _fake_file(isolated_sam_env / "env.pth")
    _fake_file(isolated_sam_env / "zoo" / "sam" / SAM_CHECKPOINT_FILES["vit_b"])
    monkeypatch.setenv("SAMSEG_SAM_CHECKPOINT", str(env_file))
    assert resolve_sam_checkpoint("vit_b", allow_download=False) == env_file


def test_zoo_checkpoint_is_found_in_nested_folders(isolated_sam_env):
    nested = _fake_file(
        isolated_sam_env / "zoo" / "segment-anything-vitl-torch" / "x" / SAM_CHECKPOINT_FILES["vit_l"]
    )
    assert resolve_sam_checkpoint("vit_l", allow_download=False) == nested


def test_zoo_checkpoint_of_another_type_is_not_used(isolated_sam_env):
    _fake_file(isolated_sam_env / "zoo" / SAM_CHECKPOINT_FILES["vit_h"])
    with pytest.raises(SamCheckpointNotFound):
        resolve_sam_checkpoint("vit_b", allow_download=False)


def test_cache_checkpoint_is_found_after_zoo(isolated_sam_env):
    cached = _fake_file(isolated_sam_env / "cache" / "checkpoints" / SAM_CHECKPOINT_FILES["vit_b"])
    assert resolve_sam_checkpoint("vit_b", allow_download=False) == cached


def test_missing_checkpoint_error_lists_places_and_env_var(isolated_sam_env):
    with pytest.raises(SamCheckpointNotFound) as info:
        resolve_sam_checkpoint("vit_h", allow_download=False)
    message = str(info.value)
    assert "SAMSEG_SAM_CHECKPOINT" in message
    assert str(isolated_sam_env / "zoo") in message
    assert SAM_CHECKPOINT_FILES["vit_h"] in message
    assert isinstance(info.value, FileNotFoundError)


def test_failed_download_falls_through_to_not_found(isolated_sam_env, monkeypatch):
    def offline(url, dst, progress=True):
        raise OSError("network unreachable")

    monkeypatch.setattr(sam_module.torch.hub, "download_url_to_file", offline)
    with pytest.raises(SamCheckpointNotFound, match="network unreachable"):
        resolve_sam_checkpoint("vit_b", allow_download=True)


def test_download_lands_in_the_samseg_cache(isolated_sam_env, monkeypatch):
    urls = []

    def fake_download(url, dst, progress=True):
        urls.append(url)
        _fake_file(pathlib.Path(dst))

    monkeypatch.setattr(sam_module.torch.hub, "download_url_to_file", fake_download)
    path = resolve_sam_checkpoint("vit_b", allow_download=True)
    assert path == isolated_sam_env / "cache" / "checkpoints" / SAM_CHECKPOINT_FILES["vit_b"]
    assert urls == ["https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth"]


def test_unknown_sam_type_lists_valid_types():
    with pytest.raises(ValueError, match="vit_b"):
        resolve_sam_checkpoint("vit_x", allow_download=False)


# ---- SAM loading -------------------------------------------------------------------------------------------


def test_load_sam_passes_a_built_sam_through():
    model = tiny_sam()
    assert load_sam(model, device="cpu") is model


def test_load_sam_rejects_other_modules():
    with pytest.raises(TypeError):
        load_sam(torch.nn.Linear(2, 2), device="cpu")


@pytest.mark.slow
def test_load_sam_infers_vit_b_from_state_dict_shapes(random_vit_b_checkpoint):
    model = load_sam(random_vit_b_checkpoint, device="cpu")
    assert model.image_encoder.patch_embed.proj.out_channels == 768
    assert not model.training
    saved = torch.load(random_vit_b_checkpoint, map_location="cpu", weights_only=True)
    key = "mask_decoder.iou_prediction_head.layers.0.weight"
    assert torch.equal(model.state_dict()[key], saved[key])


@pytest.mark.slow
def test_load_sam_by_type_uses_env_var_checkpoint(random_vit_b_checkpoint, isolated_sam_env, monkeypatch):
    monkeypatch.setenv("SAMSEG_SAM_CHECKPOINT", str(random_vit_b_checkpoint))
    assert resolve_sam_checkpoint("vit_b", allow_download=False) == random_vit_b_checkpoint
    model = load_sam("vit_b", device="cpu", allow_download=False)
    assert len(model.image_encoder.blocks) == 12


@pytest.mark.slow
def test_load_sam_reports_a_type_mismatch(random_vit_b_checkpoint):
    with pytest.raises(ValueError, match="does not match"):
        load_sam("vit_l", checkpoint=random_vit_b_checkpoint, device="cpu")


def test_tiny_sam_works_with_sam_predictor():
    from segment_anything import SamPredictor

    predictor = SamPredictor(tiny_sam())
    image = np.random.default_rng(0).integers(0, 256, (96, 130, 3), dtype=np.uint8)
    predictor.set_image(image)
    masks, scores, low_res = predictor.predict(point_coords=np.array([[40, 30]]), point_labels=np.array([1]))
    assert masks.shape == (3, 96, 130)
    assert scores.shape == (3,)
    assert low_res.shape == (3, 64, 64)


def test_tiny_sam_works_with_automatic_mask_generator():
    from segment_anything import SamAutomaticMaskGenerator

    generator = SamAutomaticMaskGenerator(
        tiny_sam(), points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.0
    )
    image = np.random.default_rng(1).integers(0, 256, (80, 100, 3), dtype=np.uint8)
    records = generator.generate(image)
    assert records and records[0]["segmentation"].shape == (80, 100)


def test_tiny_sam_is_deterministic_for_a_seed():
    a, b = tiny_sam(seed=3).state_dict(), tiny_sam(seed=3).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


# ---- upsample_argmax ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "classes,low,out",
    [((5, (7, 9), (50, 61))), (3, (16, 16), (64, 64)), (7, (13, 11), (100, 37)), (4, (10, 10), (7, 5))],
)
def test_upsample_argmax_equals_full_interpolation(classes, low, out):
    scores = torch.randn((classes, *low), generator=torch.Generator().manual_seed(sum(out)))
    full = F.interpolate(scores[None], out, mode="bilinear", align_corners=False)[0]
    # A small max_elements forces bands of one to three rows.
    labels, conf = upsample_argmax(scores, out, max_elements=classes * out[1] * 3, return_confidence=True)
    top2 = full.topk(2, dim=0).values
    near_tie = (top2[0] - top2[1]) < 1e-5
    assert torch.equal(labels[~near_tie], full.argmax(0)[~near_tie])
    torch.testing.assert_close(conf, full.max(0).values, rtol=1e-5, atol=1e-5)


def test_upsample_argmax_with_extent_matches_interpolating_the_crop():
    scores = torch.randn((4, 20, 24), generator=torch.Generator().manual_seed(0))
    expected = F.interpolate(scores[None, :, :15, :18], (61, 77), mode="bilinear", align_corners=False)[0]
    labels, _ = upsample_argmax(scores, (61, 77), source_extent=(15, 18), max_elements=4 * 77 * 5)
    assert (labels != expected.argmax(0)).float().mean() < 1e-3


def test_upsample_argmax_softmax_confidence_is_a_probability():
    scores = torch.randn((6, 8, 8), generator=torch.Generator().manual_seed(1))
    full = F.interpolate(scores[None], (30, 30), mode="bilinear", align_corners=False)[0]
    _, conf = upsample_argmax(scores, (30, 30), return_confidence=True, confidence="softmax")
    torch.testing.assert_close(conf, full.softmax(0).max(0).values, rtol=1e-5, atol=1e-6)


def _upsampled_per_class(scores, out, extent):
    """The full ``(C, H, W)`` upsampled scores, one class at a time through the reference path."""
    return torch.stack(
        [
            _upsample_argmax_reference(s[None], out, return_confidence=True, source_extent=extent)[1]
            for s in scores
        ]
    )


@pytest.mark.parametrize(
    "classes,low,out,extent,max_elements",
    [
        (150, (9, 13), (37, 51), None, 2**24),  # many classes, one tile
        (150, (8, 8), (61, 45), None, 3 * 45 * 2),  # class chunks of 3, bands of 2 rows
        (7, (7, 9), (50, 61), None, 2 * 61),  # non-integer scale, one class and one row per tile
        (5, (12, 16), (53, 47), (10.4, 12.7), 4 * 47),  # fractional extent, chunks of 2 classes
        (150, (12, 16), (41, 66), (11.5, 15.25), 2**24),  # fractional extent, one tile
        (6, (40, 50), (17, 23), (37.3, 50.0), 5 * 23),  # downsampling: bands of 1 row read 3 source rows
        (4, (10, 10), (7, 5), None, 1),  # max_elements below one row of one class: still one row at a time
    ],
)
@pytest.mark.parametrize("mode", ["max", "softmax", "normalize"])
def test_upsample_argmax_tiles_match_the_reference_row_bands(classes, low, out, extent, max_elements, mode):
    generator = torch.Generator().manual_seed(classes + sum(out))
    scores = torch.randn((classes, *low), generator=generator)
    if mode == "normalize":
        scores = scores.exp()
    kwargs = {"return_confidence": True, "confidence": mode, "source_extent": extent}
    labels, conf = upsample_argmax(scores, out, max_elements=max_elements, **kwargs)
    ref_labels, ref_conf = _upsample_argmax_reference(scores, out, **kwargs)
    top2 = _upsampled_per_class(scores, out, extent).topk(2, dim=0).values
    clear = (top2[0] - top2[1]) >= 1e-5
    assert clear.float().mean() > 0.99
    assert torch.equal(labels[clear], ref_labels[clear])
    torch.testing.assert_close(conf, ref_conf, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("max_elements", [2**24, 2 * 40, 6 * 40])
def test_upsample_argmax_exact_ties_go_to_the_lowest_class(max_elements):
    scores = torch.randn((9, 5, 6), generator=torch.Generator().manual_seed(4))
    scores[2] = scores[7] = scores.amax(dim=0) + 1.0  # classes 2 and 7 tie everywhere, in different chunks
    scores[3] = scores[2] - 2.0
    scores[3, 0] = scores[2, 0] + 1.0  # class 3 wins near the top ...
    scores[4] = scores[3]  # ... tied everywhere with class 4
    labels, _ = upsample_argmax(scores, (31, 40), max_elements=max_elements)
    ref_labels, _ = _upsample_argmax_reference(scores, (31, 40))
    assert torch.equal(labels, ref_labels)
    assert set(labels.unique().tolist()) == {2, 3}
    flat, _ = upsample_argmax(torch.zeros((5, 3, 3)), (10, 10), max_elements=2 * 10)
    assert torch.equal(flat, torch.zeros((10, 10), dtype=torch.long))


@pytest.mark.parametrize("max_elements", [3 * 40 * 2, 40 * 40])
def test_upsample_argmax_never_builds_a_tensor_above_max_elements(max_elements):
    sizes = []

    class RecordSizes(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            result = func(*args, **(kwargs or {}))
            for value in result if isinstance(result, tuple) else (result,):
                # Intermediates with a class dimension that are not views of the scores.
                if (
                    isinstance(value, torch.Tensor)
                    and value.ndim == 3
                    and value.data_ptr() != scores.data_ptr()
                ):
                    sizes.append(value.numel())
            return result

    scores = torch.randn((12, 10, 10), generator=torch.Generator().manual_seed(5))
    with RecordSizes():
        upsample_argmax(
            scores, (40, 40), max_elements=max_elements, return_confidence=True, confidence="softmax"
        )
    assert sizes and max(sizes) <= max_elements
    assert max(sizes) > max_elements // 2  # the tiles do use the budget


# ---- semantic segmenters -----------------------------------------------------------------------------------


def _images():
    rng = np.random.default_rng(0)
    return [
        rng.integers(0, 256, (100, 150, 3), dtype=np.uint8),
        rng.integers(0, 256, (37, 20, 3), dtype=np.uint8),
    ]


def test_segformer_from_local_dir_labels_images_of_different_sizes_in_one_call(tmp_path):
    segmenter = load_semantic_model(save_tiny_segformer(tmp_path / "segformer", ID2LABEL), device="cpu")
    calls = []
    segmenter.model.register_forward_hook(lambda module, args, output: calls.append(1))
    predictions = segmenter.predict(_images(), return_confidence=True)
    assert len(calls) == 1
    assert [p.labels.shape for p in predictions] == [(100, 150), (37, 20)]
    assert predictions[0].labels.dtype == np.int32
    assert predictions[1].confidence.dtype == np.float16 and predictions[1].confidence.shape == (37, 20)
    assert predictions[0].probs_lowres.shape == (3, 16, 16)
    assert segmenter.id2label == ID2LABEL and segmenter.num_classes == 3


def test_segformer_dir_without_processor_config_builds_a_default_processor(tmp_path):
    tiny_segformer(ID2LABEL).save_pretrained(tmp_path / "bare")
    segmenter = load_semantic_model(tmp_path / "bare", device="cpu")
    assert type(segmenter.processor).__name__.startswith("SegformerImageProcessor")
    assert segmenter.predict(_images()[1:])[0].labels.shape == (37, 20)


def test_semantic_predictions_match_single_image_predictions():
    segmenter = load_semantic_model(tiny_segformer(ID2LABEL, seed=1), device="cpu")
    images = _images()
    together = segmenter.predict(images)
    alone = [segmenter.predict([image])[0] for image in images]
    for a, b in zip(together, alone):
        np.testing.assert_array_equal(a.labels, b.labels)


def test_universal_model_labels_at_original_size_without_post_processing(monkeypatch):
    processor = tiny_mask2former_processor()

    def forbidden(*args, **kwargs):
        raise AssertionError("post_process_semantic_segmentation must not be called")

    monkeypatch.setattr(processor, "post_process_semantic_segmentation", forbidden)
    segmenter = load_semantic_model(tiny_mask2former(ID2LABEL), processor=processor, device="cpu")
    assert segmenter.is_universal
    predictions = segmenter.predict(_images(), return_confidence=True)
    assert [p.labels.shape for p in predictions] == [(100, 150), (37, 20)]
    assert all(p.labels.min() >= 0 and p.labels.max() < 3 for p in predictions)
    probs = predictions[0].probs_lowres
    torch.testing.assert_close(probs.sum(0), torch.ones(probs.shape[1:]))


def test_universal_model_loads_from_local_dir(tmp_path):
    segmenter = load_semantic_model(save_tiny_mask2former(tmp_path / "m2f", ID2LABEL), device="cpu")
    assert type(segmenter.model).__name__ == "Mask2FormerForUniversalSegmentation"
    assert segmenter.predict(_images()[:1])[0].labels.shape == (100, 150)


def test_unreachable_hub_id_explains_offline_mode(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SemanticModelNotFound, match="HF_HUB_OFFLINE"):
        load_semantic_model("nobody/no-such-segformer-model")


def test_semantic_model_rejects_images_that_are_not_rgb():
    segmenter = load_semantic_model(tiny_segformer(ID2LABEL), device="cpu")
    with pytest.raises(ValueError, match="RGB"):
        segmenter.predict([np.zeros((10, 10, 5), np.uint8)])
