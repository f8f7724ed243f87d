"""The promptable interface over SAM-family models: shapes, and equality with each library's own API."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from samseg_core.models.promptable import (
    Decoded,
    PromptableModel,
    SegmentAnythingBackend,
    TransformersSamBackend,
    load_promptable,
)
from samseg_core.testing import tiny_sam
from samseg_core.testing.tiny_sam_family import save_tiny_transformers_sam, tiny_transformers_sam

KINDS = ["sam", "sam_hq", "sam2"]
MODEL_CLASSES = {"sam": "SamModel", "sam_hq": "SamHQModel", "sam2": "Sam2Model"}
POINT = [50.0, 60.0]
BOX = [20.0, 15.0, 150.0, 90.0]


def _image(seed: int = 0, shape: tuple[int, int] = (120, 200)) -> np.ndarray:
    """A random RGB image with a bright rectangle, so the two test images differ in structure."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, (*shape, 3), dtype=np.uint8)
    image[20 : 20 + 40 * (seed + 1) // 2, 30:90] = 250
    return image


@pytest.fixture(scope="module")
def sa_model():
    return tiny_sam()


@pytest.fixture(scope="module")
def sa_backend(sa_model) -> SegmentAnythingBackend:
    return load_promptable(sa_model)


@pytest.fixture(scope="module", params=KINDS)
def hf_dir(request, tmp_path_factory):
    return request.param, save_tiny_transformers_sam(
        tmp_path_factory.mktemp(request.param), kind=request.param
    )


@pytest.fixture(scope="module")
def hf_backend(hf_dir) -> TransformersSamBackend:
    _, directory = hf_dir
    return load_promptable(str(directory), device="cpu")


@pytest.fixture(params=["segment_anything", "transformers"])
def backend(request, sa_backend, hf_backend) -> PromptableModel:
    return sa_backend if request.param == "segment_anything" else hf_backend


# (a) loading


def test_segment_anything_backend_loads(sa_backend, sa_model):
    assert isinstance(sa_backend, SegmentAnythingBackend)
    assert sa_backend.sam is sa_model
    assert sa_backend.input_size == 256 and sa_backend.low_res_size == 64
    assert sa_backend.mask_threshold == 0.0
    assert sa_backend.device == torch.device("cpu")
    assert load_promptable(sa_backend) is sa_backend


def test_transformers_backend_loads_from_directory(hf_dir, hf_backend):
    kind, directory = hf_dir
    assert (directory / "config.json").is_file()
    assert isinstance(hf_backend, TransformersSamBackend)
    assert type(hf_backend.model).__name__ == MODEL_CLASSES[kind]
    assert hf_backend.kind == kind and hf_backend.is_hq == (kind == "sam_hq")
    assert hf_backend.input_size == 256 and hf_backend.low_res_size == 64
    assert type(hf_backend.processor).__name__ == MODEL_CLASSES[kind].replace("Model", "Processor")
    assert load_promptable(hf_backend) is hf_backend


def test_directory_round_trip_keeps_the_weights(hf_dir, hf_backend):
    kind, _ = hf_dir
    model, processor = tiny_transformers_sam(kind)
    fresh = load_promptable(model)
    assert isinstance(fresh, TransformersSamBackend)
    image = _image()
    args = (torch.tensor([[POINT]]), torch.tensor([[1]]))
    a = fresh.decode(fresh.embed([image]), 0, *args)
    b = hf_backend.decode(hf_backend.embed([image]), 0, *args)
    assert torch.equal(a.low_res_logits, b.low_res_logits)
    assert torch.equal(a.iou_predictions, b.iou_predictions)


def test_module_imports_no_fiftyone():
    code = "import sys, samseg_core.models.promptable, samseg_core.testing.tiny_sam_family; print('fiftyone' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# (b) shapes and finite values


def test_tiny_models_are_not_degenerate(backend):
    """Different images must give different embeddings, or the equality tests below would prove little."""
    emb = backend.embed([_image(0), _image(1)])
    assert (emb.features[0] - emb.features[1]).abs().max() > 0.1
    for extra in emb.extras:
        assert (extra[0] - extra[1]).abs().max() > 0.1
    args = (torch.tensor([[POINT]]), torch.tensor([[1]]))
    first, second = (backend.decode(emb, i, *args).low_res_logits for i in (0, 1))
    assert first.std() > 0.01  # logits well clear of the tolerances used below
    assert (first - second).abs().max() > 0.05


def _check(decoded: Decoded, batch: int, masks: int, side: int = 64) -> None:
    assert decoded.low_res_logits.shape == (batch, masks, side, side)
    assert decoded.iou_predictions.shape == (batch, masks)
    assert torch.isfinite(decoded.low_res_logits).all()
    assert torch.isfinite(decoded.iou_predictions).all()
    assert decoded.low_res_logits.device.type == "cpu"


@pytest.mark.parametrize("multimask", [True, False])
def test_decode_shapes(backend, multimask):
    images = [_image(0), _image(1, (90, 60))]
    emb = backend.embed(images)
    assert len(emb) == 2
    assert emb.original_sizes == [(120, 200), (90, 60)]
    if getattr(backend, "kind", None) == "sam2":  # SAM 2 resizes to the square itself, no padding
        assert emb.input_sizes == [(256, 256), (256, 256)]
    else:
        assert emb.input_sizes == [(154, 256), (256, 171)]
    m = 3 if multimask else 1
    points = torch.tensor([[POINT, [10.0, 20.0]], [[5.0, 5.0], [40.0, 30.0]]])
    labels = torch.tensor([[1, 0], [1, 1]])
    _check(backend.decode(emb, 0, points, labels, multimask=multimask), 2, m)
    boxes = torch.tensor([BOX, [0.0, 0.0, 50.0, 50.0], [10.0, 10.0, 20.0, 80.0]])
    _check(backend.decode(emb, 1, boxes=boxes, multimask=multimask), 3, m)
    prior = backend.decode(emb, 1, points[:1], labels[:1], multimask=False).low_res_logits
    with_mask = backend.decode(emb, 1, points[:1], labels[:1], mask_inputs=prior, multimask=multimask)
    _check(with_mask, 1, m)
    both = backend.decode(emb, 0, points, labels, boxes=boxes[:2], multimask=multimask)
    _check(both, 2, m)
    full = backend.upscale(both.low_res_logits, emb.original_sizes[0])
    assert full.shape == (2, m, 120, 200) and torch.isfinite(full).all()


def test_mask_input_changes_the_output(backend):
    emb = backend.embed([_image()])
    args = (torch.tensor([[POINT]]), torch.tensor([[1]]))
    plain = backend.decode(emb, 0, *args, multimask=False)
    masked = backend.decode(emb, 0, *args, mask_inputs=torch.full((1, 1, 64, 64), 5.0), multimask=False)
    assert not torch.allclose(plain.low_res_logits, masked.low_res_logits)


def test_prompts_are_validated(backend):
    emb = backend.embed([_image()])
    with pytest.raises(ValueError, match="together"):
        backend.decode(emb, 0, points=torch.tensor([[POINT]]))
    with pytest.raises(ValueError, match="batch size"):
        backend.decode(emb, 0, torch.tensor([[POINT]]), torch.tensor([[1]]), boxes=torch.tensor([BOX, BOX]))
    with pytest.raises(ValueError, match="mask_inputs"):
        backend.decode(emb, 0, mask_inputs=torch.zeros(1, 1, 32, 32))
    with pytest.raises(IndexError):
        backend.decode(emb, 1, boxes=torch.tensor([BOX]))
    with pytest.raises(ValueError, match="uint8"):
        backend.embed([np.zeros((8, 8, 3), dtype=np.float32)])


# (c) segment_anything backend == SamPredictor


@pytest.mark.parametrize("multimask", [True, False])
@pytest.mark.parametrize("prompt", ["point", "box", "point+box", "mask"])
def test_segment_anything_backend_equals_sam_predictor(sa_model, sa_backend, prompt, multimask):
    from segment_anything import SamPredictor

    images = [_image(0), _image(1, (90, 150))]
    image = images[1]
    predictor = SamPredictor(sa_model)
    predictor.set_image(image)
    kwargs, ours = {}, {}
    if "point" in prompt or prompt == "mask":
        kwargs.update(point_coords=np.array([POINT, [100.0, 30.0]]), point_labels=np.array([1, 0]))
        ours.update(points=torch.tensor([[POINT, [100.0, 30.0]]]), point_labels=torch.tensor([[1, 0]]))
    if "box" in prompt:
        kwargs["box"] = np.array(BOX)
        ours["boxes"] = torch.tensor([BOX])
    if prompt == "mask":
        prior = np.random.default_rng(3).normal(size=(1, 64, 64)).astype(np.float32) * 4
        kwargs["mask_input"] = prior
        ours["mask_inputs"] = torch.from_numpy(prior)[None]
    masks, iou, low_res = predictor.predict(**kwargs, multimask_output=multimask, return_logits=True)

    emb = sa_backend.embed(images)
    assert torch.allclose(emb.features[1:2], predictor.features, atol=1e-4)
    decoded = sa_backend.decode(emb, 1, **ours, multimask=multimask)
    assert torch.allclose(decoded.low_res_logits[0], torch.from_numpy(low_res), atol=1e-4)
    assert torch.allclose(decoded.iou_predictions[0], torch.from_numpy(iou), atol=1e-4)
    full = sa_backend.upscale(decoded.low_res_logits, image.shape[:2])
    assert torch.allclose(full[0], torch.from_numpy(masks), atol=1e-3)
    generic = PromptableModel.upscale(sa_backend, decoded.low_res_logits, image.shape[:2])
    assert torch.allclose(generic, full, atol=1e-5)


# (d) transformers backend == SamModel(pixel_values=...) through SamProcessor


def test_transformers_backend_equals_model_forward(hf_backend):
    image = _image(1, (90, 150))
    processor, model = hf_backend.processor, hf_backend.model
    inputs = processor(images=image, input_points=[[[POINT]]], input_labels=[[[1]]], return_tensors="pt")
    assert inputs["input_points"].shape == (1, 1, 1, 2)
    with torch.no_grad():
        out = model(
            pixel_values=inputs["pixel_values"],
            input_points=inputs["input_points"],
            input_labels=inputs["input_labels"],
        )
    emb = hf_backend.embed([_image(0), image])
    decoded = hf_backend.decode(emb, 1, torch.tensor([[POINT]]), torch.tensor([[1]]))
    assert out.pred_masks.shape == (1, 1, 3, 64, 64)
    assert torch.allclose(decoded.low_res_logits, out.pred_masks[:, 0], atol=1e-5)
    assert torch.allclose(decoded.iou_predictions, out.iou_scores[:, 0], atol=1e-5)
    # the processor's own upscaling agrees with ours
    sizes = [inputs["original_sizes"]]
    if hf_backend.kind != "sam2":  # SAM 2's post-processing has no padding to crop
        sizes.append(inputs["reshaped_input_sizes"])
    theirs = processor.post_process_masks(out.pred_masks, *sizes, binarize=False)[0]
    ours = hf_backend.upscale(decoded.low_res_logits, image.shape[:2])
    assert ours.shape == theirs.shape == (1, 3, 90, 150)
    assert torch.allclose(ours, theirs, atol=1e-4)


def test_transformers_prompt_batch_equals_point_batch(hf_backend):
    """B prompts in our layout (image batch) equal the processor's point-batch layout of the same prompts."""
    image = _image(0)
    second = [120.0, 40.0]
    inputs = hf_backend.processor(
        images=image, input_points=[[[POINT], [second]]], input_labels=[[[1], [1]]], return_tensors="pt"
    )
    assert inputs["input_points"].shape == (1, 2, 1, 2)
    with torch.no_grad():
        out = hf_backend.model(
            pixel_values=inputs["pixel_values"],
            input_points=inputs["input_points"],
            input_labels=inputs["input_labels"],
            multimask_output=False,
        )
    decoded = hf_backend.decode(
        hf_backend.embed([image]),
        0,
        torch.tensor([[POINT], [second]]),
        torch.tensor([[1], [1]]),
        multimask=False,
    )
    assert torch.allclose(decoded.low_res_logits, out.pred_masks[0], atol=1e-5)
    assert torch.allclose(decoded.iou_predictions, out.iou_scores[0], atol=1e-5)


def test_transformers_backend_box_equals_model_forward(hf_backend):
    image = _image(1, (90, 150))
    inputs = hf_backend.processor(images=image, input_boxes=[[BOX]], return_tensors="pt")
    assert inputs["input_boxes"].shape == (1, 1, 4)
    with torch.no_grad():
        out = hf_backend.model(
            pixel_values=inputs["pixel_values"], input_boxes=inputs["input_boxes"], multimask_output=False
        )
    decoded = hf_backend.decode(hf_backend.embed([image]), 0, boxes=torch.tensor([BOX]), multimask=False)
    assert torch.allclose(decoded.low_res_logits, out.pred_masks[:, 0], atol=1e-5)
    assert torch.allclose(decoded.iou_predictions, out.iou_scores[:, 0], atol=1e-5)


# (e) refusals


@pytest.mark.parametrize("spec", ["no-such-model", 42, None, object()])
def test_load_promptable_refuses_unknown_specs(spec):
    with pytest.raises(ValueError, match="cannot build a promptable model from .*segment_anything Sam"):
        load_promptable(spec)


def test_load_promptable_refuses_directory_of_another_model_type(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "segformer"}')
    with pytest.raises(ValueError, match="cannot build .*model_type 'segformer'"):
        load_promptable(str(tmp_path))
    (tmp_path / "config.json").write_text('{"model_type": "sam3_video"}')
    with pytest.raises(ValueError, match="model_type 'sam3_video'"):
        load_promptable(tmp_path)
    (tmp_path / "config.json").write_text("not json")
    with pytest.raises(ValueError, match="cannot build"):
        load_promptable(tmp_path)


def test_transformers_backend_refuses_other_models():
    with pytest.raises(ValueError, match="supports"):
        TransformersSamBackend(torch.nn.Linear(2, 2))


def test_transformers_backend_refuses_mismatched_processor():
    model, _ = tiny_transformers_sam("sam")
    _, processor = tiny_transformers_sam("sam", image_size=320)
    with pytest.raises(ValueError, match="processor resizes to 320 but the model expects 256"):
        TransformersSamBackend(model, processor)
