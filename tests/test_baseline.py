"""run_baseline through the SDK, through foo.execute_operator, and as a queued delegated operation."""

from __future__ import annotations

import fiftyone as fo
import fiftyone.operators as foo
import numpy as np
import pytest
from PIL import Image

from samseg_core import run_baseline
from samseg_core.errors import FieldExistsError
from samseg_core.labels import read_segmentation
from samseg_core.testing import save_tiny_segformer

ID2LABEL = {0: "background", 1: "sky", 2: "road", 3: "car"}
OPERATOR = "@samseg/samseg/run_baseline"


@pytest.fixture(scope="module")
def segformer_dir(tmp_path_factory):
    return str(save_tiny_segformer(tmp_path_factory.mktemp("segformer"), ID2LABEL))


@pytest.fixture
def image_dataset(dataset, tmp_path):
    rng = np.random.default_rng(0)
    sizes = [(40, 60), (33, 47), (64, 64)]
    for i, (h, w) in enumerate(sizes):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
        dataset.add_sample(fo.Sample(filepath=str(path)))
    return dataset


def _mask_shapes(samples, field):
    return [read_segmentation(label).shape for label in samples.values(field)]


def test_sdk_writes_full_size_segmentations_and_mask_targets(image_dataset, segformer_dir):
    summary = run_baseline(image_dataset, model=segformer_dir, device="cpu", batch_size=2)

    assert (summary.processed, summary.failed) == (3, 0)
    assert _mask_shapes(image_dataset, "baseline") == [(40, 60), (33, 47), (64, 64)]
    assert image_dataset.mask_targets["baseline"] == ID2LABEL
    labels = np.concatenate([read_segmentation(s).ravel() for s in image_dataset.values("baseline")])
    assert set(np.unique(labels)) <= set(ID2LABEL)


def test_existing_mask_targets_are_kept(image_dataset, segformer_dir):
    image_dataset.mask_targets = {"baseline": {200: "user class"}}
    image_dataset.save()

    run_baseline(image_dataset, model=segformer_dir, device="cpu")

    assert image_dataset.mask_targets["baseline"] == {200: "user class", **ID2LABEL}


def test_conflicting_mask_target_is_refused_without_overwrite(image_dataset, segformer_dir):
    image_dataset.mask_targets = {"baseline": {1: "person"}}
    image_dataset.save()

    with pytest.raises(ValueError, match="person"):
        run_baseline(image_dataset, model=segformer_dir, device="cpu")
    assert image_dataset.get_field("baseline") is None


def test_bad_file_gets_an_error_and_the_run_goes_on(image_dataset, segformer_dir, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_text("this is not a png")
    image_dataset.add_sample(fo.Sample(filepath=str(bad)))

    summary = run_baseline(image_dataset, model=segformer_dir, device="cpu")

    assert (summary.processed, summary.failed) == (3, 1)
    broken = image_dataset.match(fo.ViewField("filepath") == str(bad)).first()
    assert broken.baseline is None
    assert "not a recognised image" in broken.baseline_error
    assert image_dataset.count("baseline_error") == 1


def test_existing_results_are_not_clobbered(image_dataset, segformer_dir):
    run_baseline(image_dataset, model=segformer_dir, device="cpu")
    before = [read_segmentation(s) for s in image_dataset.values("baseline")]

    with pytest.raises(FieldExistsError, match="overwrite=True"):
        run_baseline(image_dataset, model=segformer_dir, device="cpu")
    resumed = run_baseline(image_dataset, model=segformer_dir, device="cpu", skip_existing=True)

    assert (resumed.processed, resumed.skipped) == (0, 3)
    after = [read_segmentation(s) for s in image_dataset.values("baseline")]
    assert all(np.array_equal(a, b) for a, b in zip(before, after))


def test_overwrite_replaces_results(image_dataset, segformer_dir):
    image_dataset.set_values("baseline", [fo.Segmentation(mask=np.full((2, 2), 9, np.uint8))] * 3)

    summary = run_baseline(image_dataset, model=segformer_dir, device="cpu", overwrite=True)

    assert summary.processed == 3
    assert _mask_shapes(image_dataset, "baseline") == [(40, 60), (33, 47), (64, 64)]


def test_mask_dir_writes_pngs_and_confidence_heatmaps(image_dataset, segformer_dir, tmp_path):
    run_baseline(
        image_dataset, model=segformer_dir, device="cpu", mask_dir=tmp_path / "masks", confidence_field="conf"
    )

    sample = image_dataset.first()
    assert sample.baseline.mask is None and sample.baseline.mask_path.startswith(str(tmp_path / "masks"))
    assert read_segmentation(sample.baseline).shape == (40, 60)
    heat = sample.conf.map
    assert heat.shape == (40, 60) and 0.0 < heat.min() <= heat.max() <= 1.0


def test_plugin_registers_every_listed_operator():
    from pathlib import Path

    import fiftyone.plugins as fop
    import yaml

    manifest = yaml.safe_load((Path(__file__).resolve().parents[1] / "fiftyone.yml").read_text())
    plugin = fop.get_plugin("@samseg/samseg")
    registered = {op.name for op in foo.list_operators(builtin=False) if op.plugin_name == "@samseg/samseg"}

    assert plugin.name == "@samseg/samseg"
    assert "run_baseline" in registered
    # an operator missing from fiftyone.yml is silently dropped by FiftyOne, so the two lists must agree
    assert registered == set(manifest["operators"]) | set(manifest.get("panels", []))


def test_operator_runs_immediately_through_execute_operator(image_dataset, segformer_dir):
    result = foo.execute_operator(
        OPERATOR,
        {
            "view": image_dataset.view(),
            "params": {"model": segformer_dir, "label_field": "op_seg", "device": "cpu"},
        },
    )

    assert result.result["processed"] == 3
    assert _mask_shapes(image_dataset, "op_seg") == [(40, 60), (33, 47), (64, 64)]


def test_operator_call_forwards_to_the_sdk(image_dataset, segformer_dir):
    operator = foo.get_operator(OPERATOR)

    result = operator(image_dataset.limit(2), model=segformer_dir, label_field="called", device="cpu")

    assert result["processed"] == 2
    assert image_dataset.count("called") == 2


def test_delegated_operation_is_queued_then_executed(image_dataset, segformer_dir):
    from fiftyone.operators.delegated import DelegatedOperationService
    from fiftyone.operators.executor import ExecutionRunState

    queued = foo.get_operator(OPERATOR)(
        image_dataset, model=segformer_dir, label_field="queued", delegate=True
    )
    service = DelegatedOperationService()
    doc = service.get(queued.result["id"])

    assert doc.run_state == ExecutionRunState.QUEUED
    assert image_dataset.get_field("queued") is None

    service.execute_operation(doc)

    assert service.get(doc.id).run_state == ExecutionRunState.COMPLETED
    image_dataset.reload()
    assert image_dataset.count("queued") == 3
