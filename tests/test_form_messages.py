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
