"""Form errors in the App's words: the form's labels, not the Python arguments the SDK error names."""

from __future__ import annotations

import fiftyone as fo
import fiftyone.operators as foo
from fiftyone.operators.executor import ExecutionContext

from operators.forms import in_form_words
from samseg_core.errors import StageParameterError
from samseg_core.stages.registry import get_stage


def test_python_arguments_become_form_labels_and_instructions():
    spec, _ = get_stage("refine_with_sam")
    error = StageParameterError(
        "label_field",
        "field 'coarse' exists and was not written by samseg",
        "pass overwrite=True to replace it, skip_existing=True to resume it, or choose another name",
    )

    message = in_form_words(spec, error)

    assert message == (
        "Output segmentation field (label_field): field 'coarse' exists and was not written by samseg. "
        "tick 'Overwrite' to replace it, tick 'Resume' to resume it, or choose another name"
    )


def test_ordinary_words_that_are_option_names_stay_as_they_are():
    spec, _ = get_stage("semantic_voting")
    error = StageParameterError(
        "masks_field", "the masks of this mode are missing", "pass masks_field=gt_masks"
    )

    assert in_form_words(spec, error) == (
        "Stored masks field (masks_field): the masks of this mode are missing. set 'Stored masks field' to gt_masks"
    )


def test_resume_and_overwrite_ticked_together_are_refused_in_the_form_in_its_words(scene_dataset):
    params = {"baseline_field": "coarse", "label_field": "fresh", "skip_existing": True, "overwrite": True}
    ctx = ExecutionContext(request_params={"dataset_name": scene_dataset.name, "params": params})

    form = foo.get_operator("@samseg/samseg/refine_with_sam").resolve_input(ctx).type.properties

    invalid = {name: prop.error_message for name, prop in form.items() if prop.invalid}
    assert list(invalid) == ["overwrite"]
    assert "'Resume'" in invalid["overwrite"] and "skip_existing" not in invalid["overwrite"]
    assert not isinstance(scene_dataset, fo.DatasetView) and not scene_dataset.has_field("fresh")


def test_output_defaults_never_name_a_field_samseg_did_not_create(scene_dataset):
    from operators.forms import fresh_output_name

    scene_dataset.add_sample_field("sam_refined", fo.StringField)  # the user's own field of that name
    scene_dataset.add_sample_field("sam_refined_2", fo.StringField)
    ctx = ExecutionContext(request_params={"dataset_name": scene_dataset.name, "params": {}})

    form = foo.get_operator("@samseg/samseg/refine_with_sam").resolve_input(ctx).type.properties

    spec, _ = get_stage("refine_with_sam")
    declared = next(o.default for o in spec.stage_options() if o.name == "label_field")
    assert declared == "sam_refined" and form["label_field"].default == "sam_refined_3"
    assert fresh_output_name(scene_dataset, "brand_new") == "brand_new"


def _voting_form(dataset, params=None):
    ctx = ExecutionContext(request_params={"dataset_name": dataset.name, "params": params or {}})
    return foo.get_operator("@samseg/samseg/semantic_voting").resolve_input(ctx).type.properties


def test_mask_source_starts_as_superpixels_without_a_sam_checkpoint_and_says_why(scene_dataset):
    form = _voting_form(scene_dataset)

    assert form["masks"].default == "superpixels"
    assert "No SAM vit_b checkpoint on this machine" in form["masks_note"].view.label
    assert "superpixel_max_side" in form and "points_per_side" not in form  # the superpixel options show


def test_mask_source_starts_as_sam_where_a_checkpoint_resolves(scene_dataset, tmp_path, monkeypatch):
    checkpoint = tmp_path / "sam_vit_b_01ec64.pth"
    checkpoint.write_bytes(b"found, not read")
    monkeypatch.setenv("SAMSEG_SAM_CHECKPOINT", str(checkpoint))

    form = _voting_form(scene_dataset)

    assert form["masks"].default == "sam" and "masks_note" not in form
    assert "points_per_side" in form


def test_every_input_of_every_stage_form_has_a_label_and_help(scene_dataset):
    import fiftyone.operators.types as types

    from operators.forms import build_form
    from samseg_core.stages.registry import stage_specs

    missing = []
    for spec in stage_specs():
        for params in ({}, {"masks": "sam"}, {"masks": "field"}, {"masks": "superpixels"}):
            inputs = types.Object()
            build_form(spec, inputs, params, scene_dataset)
            for name, prop in inputs.properties.items():
                if isinstance(prop.view, (types.Notice, types.Error)):
                    continue
                view = prop.view
                if not (getattr(view, "label", None) and getattr(view, "description", None)):
                    missing.append(f"{spec.name}.{name}")
    assert not missing, sorted(set(missing))
