"""The stage contract, checked over the stage registry: a stage added later is covered without new test code.

For every registered stage (with a valid example call from ``samseg_core.testing.stage_examples``):

- its SDK signature, its operator's form and its operator's ``__call__`` take the same options with the same
  defaults;
- every bad parameter derived from its declaration (missing input field or run, wrong label type, output equal
  to an input, two outputs equal, number out of range, unknown choice, empty view, unavailable device) raises
  one StageParameterError naming the parameter, from the SDK and through ``foo.execute_operator``, and the
  dataset (fields, values, mask targets, runs, tags, saved views, files in ``mask_dir``) is unchanged;
- every output role holding a user's content (each output field, the error field, mask files, a run under
  ``eval_key``, a queue's tag and views) is refused without ``overwrite=True``, also under
  ``skip_existing=True``.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from samseg_core.errors import StageParameterError
from samseg_core.stages.options import INPUT, INPUT_RUN, OUTPUT, OUTPUT_RUN, SEGMENTATION
from samseg_core.stages.registry import get_stage, stage_specs
from samseg_core.testing.snapshots import changes, snapshot
from samseg_core.testing.stage_examples import FAILURES_KEY, IOU_KEY, contract_dataset, stage_example

STAGES = [spec.name for spec in stage_specs()]
PLUGIN = "@samseg/samseg"
_WRONG_TYPE = {"Segmentation": "sa1b", "Detections": "baseline", "Heatmap": "baseline"}


@dataclass
class Case:
    """One bad call: what is overridden, and which parameters the error may name."""

    kind: str
    overrides: dict[str, Any]
    params: set[str]
    empty_view: bool = False
    setup: dict[str, str] = field(default_factory=dict)  # new Segmentation field name -> copied from


@pytest.fixture
def workdir(tmp_path):
    return tmp_path


@pytest.fixture
def contract(dataset, workdir):
    return contract_dataset(dataset, workdir)


def _options_of(spec: Any, example: dict[str, Any]) -> Any:
    stage_keys = {option.name for option in spec.stage_options()}
    options, _ = spec.parse({k: v for k, v in example.items() if k in stage_keys})
    return options


def _involved(example: dict[str, Any], value: Any, name: str) -> set[str]:
    """The option ``name`` plus the options of the example that hold ``value`` too."""
    same = {k for k, v in example.items() if v == value or (isinstance(v, tuple) and value in v)}
    return {name, *same}


def _input_cases(spec: Any, example: dict[str, Any]) -> list[Case]:
    cases = []
    for option in spec.stage_options():
        if option.role == INPUT:
            missing = ("no_such_field",) if option.many else "no_such_field"
            cases.append(Case("missing field", {option.name: missing}, {option.name}))
            wrong = _WRONG_TYPE[option.info.label_type]
            value = (wrong,) if option.many else wrong
            cases.append(
                Case("wrong label type", {option.name: value}, _involved(example, wrong, option.name))
            )
        elif option.role == INPUT_RUN:
            cases.append(Case("missing field", {option.name: "no_such_run"}, {option.name}))
            other = FAILURES_KEY if "failures" not in option.info.run_kinds else IOU_KEY
            cases.append(
                Case("wrong label type", {option.name: other}, _involved(example, other, option.name))
            )
    return cases


def _output_cases(spec: Any, example: dict[str, Any]) -> list[Case]:
    if spec.plans_outputs:
        return []
    options = _options_of(spec, example)
    primary = options.output_fields()[0]
    segmentation_inputs = [
        o
        for o in spec.stage_options()
        if o.role == INPUT and not o.many and o.info.label_type == SEGMENTATION
    ]
    cases = []
    if segmentation_inputs:
        target = segmentation_inputs[0].name
        cases.append(
            Case(
                "output equals input",
                {target: primary.name},
                {target, primary.param},
                setup={primary.name: "baseline"},
            )
        )
    for option in spec.stage_options():
        if option.role == OUTPUT_RUN:
            cases.append(Case("invalid output name", {option.name: "bad key"}, {option.name}))
        elif option.role == OUTPUT and not option.many:
            cases.append(Case("invalid output name", {option.name: "bad.name"}, {option.name}))
    outputs = [o for o in spec.stage_options() if o.role == OUTPUT and example.get(o.name, o.default)]
    if len(outputs) >= 2:
        first = example.get(outputs[0].name, outputs[0].default)
        cases.append(Case("two outputs equal", {outputs[1].name: first}, {outputs[0].name, outputs[1].name}))
    return cases


def _value_cases(spec: Any) -> list[Case]:
    cases = []
    for option in spec.all_options():
        info = option.info
        if option.kind in ("int", "float"):
            step = 1 if option.kind == "int" else 0.5
            if info.ge is not None:
                bad = info.ge - step
            elif info.gt is not None:
                bad = info.gt
            elif info.le is not None:
                bad = info.le + step
            else:
                continue
            cases.append(Case("out-of-range number", {option.name: bad}, {option.name}))
        elif option.kind in ("choice", "choices"):
            bad = ("not_a_choice",) if option.kind == "choices" else "not_a_choice"
            cases.append(Case("unknown choice", {option.name: bad}, {option.name}))
    return cases


def bad_cases(spec: Any, example: dict[str, Any]) -> list[Case]:
    """Every bad-parameter case the declaration of ``spec`` implies."""
    return [
        *_input_cases(spec, example),
        *_output_cases(spec, example),
        *_value_cases(spec),
        Case("empty view", {}, {"samples"}, empty_view=True),
        Case("unavailable device", {"device": "cuda:99"}, {"device"}),
    ]


def _prepare(dataset: Any, case: Case) -> None:
    for name, source in case.setup.items():
        dataset.clone_sample_field(source, name)
        dataset.mask_targets = {**dataset.mask_targets, name: dict(dataset.mask_targets.get(source, {}))}
        dataset.save()


def _sdk_refusal(sdk: Any, samples: Any, kwargs: dict[str, Any], case: Case) -> str | None:
    """None when the call raised a StageParameterError naming one of ``case.params``, else what went wrong."""
    try:
        sdk(samples, **kwargs)
    except StageParameterError as err:
        if err.param not in case.params:
            return f"named '{err.param}', expected one of {sorted(case.params)}: {err}"
        if not err.remedy:
            return f"no remedy in: {err}"
        return None
    except Exception as err:  # any other error is not a clean refusal
        return f"{type(err).__name__}: {err}"
    return "accepted"


def _operator_refusal(spec: Any, samples: Any, kwargs: dict[str, Any], case: Case) -> str | None:
    import fiftyone.operators as foo

    from operators.forms import params_from_kwargs

    params = params_from_kwargs(spec, kwargs)
    try:
        result = foo.execute_operator(f"{PLUGIN}/{spec.name}", {"view": samples, "params": params})
        error = result.error
    except Exception as err:
        error = str(err)
    if not error:
        return "accepted"
    return (
        None
        if any(p in error for p in case.params)
        else f"error does not name {sorted(case.params)}: {error[:300]}"
    )


def _invalid_inputs(spec: Any, samples: Any, params: dict[str, Any]) -> dict[str, str]:
    """``{input: error message}`` of the inputs the operator's form marks invalid for ``params``."""
    from types import SimpleNamespace

    import fiftyone.operators as foo

    ctx = SimpleNamespace(params=params, dataset=samples._dataset, target_view=lambda: samples)
    form = foo.get_operator(f"{PLUGIN}/{spec.name}").resolve_input(ctx).type
    return {name: prop.error_message for name, prop in form.properties.items() if prop.invalid}


def _form_refusal(spec: Any, samples: Any, kwargs: dict[str, Any], case: Case) -> str | None:
    from operators.forms import params_from_kwargs

    invalid = _invalid_inputs(spec, samples, params_from_kwargs(spec, kwargs))
    if not invalid:
        return "not marked invalid"
    named = any(p in invalid or any(p in message for message in invalid.values()) for p in case.params)
    return None if named else f"marked {invalid} but not {sorted(case.params)}"


@pytest.mark.parametrize("name", STAGES)
def test_bad_parameters_are_refused_before_anything_is_written(contract, workdir, name):
    spec, sdk = get_stage(name)
    example = stage_example(name, workdir)
    directories = [workdir / "masks"]
    failures: dict[str, list[str]] = {"sdk": [], "operator": [], "form": []}
    cases = bad_cases(spec, example)
    for case in cases:
        _prepare(contract, case)
        samples = contract.limit(0) if case.empty_view else contract.view()
        kwargs = {**example, **case.overrides}
        before = snapshot(contract, directories)
        for face, refusal in (("sdk", _sdk_refusal(sdk, samples, kwargs, case)),
                              ("operator", _operator_refusal(spec, samples, kwargs, case)),
                              ("form", _form_refusal(spec, samples, kwargs, case))):  # fmt: skip
            changed = changes(before, snapshot(contract, directories))
            if (
                refusal
                or any(changed.values())
                or snapshot(contract, directories)["schema"] != before["schema"]
            ):
                failures[face].append(f"{case.kind} {case.overrides}: {refusal or 'changed ' + str(changed)}")
    total = len(cases)
    print(
        f"\n{name}: bad-parameter cases refused cleanly: SDK {total - len(failures['sdk'])}/{total}, "
        f"operators {total - len(failures['operator'])}/{total}, "
        f"forms marked invalid {total - len(failures['form'])}/{total}"
    )
    assert failures == {"sdk": [], "operator": [], "form": []}


@pytest.mark.parametrize("name", STAGES)
def test_the_default_form_marks_a_missing_input_invalid(name):
    """With every option at its default (run keys included), a missing input shows inline in the form."""
    import fiftyone as fo

    spec, _ = get_stage(name)
    required = [o for o in spec.stage_options() if o.role == INPUT and o.info.required and not o.many]
    if not required:
        pytest.skip(f"{name} reads no required input field")
    ds = fo.Dataset()
    ds.add_sample(fo.Sample(filepath="/nonexistent/image.png"))
    try:
        from operators.forms import form_options, params_from_kwargs

        defaults = {o.name: o.default for o in form_options(spec) if o.default is not inspect.Parameter.empty}
        params = params_from_kwargs(spec, {**defaults, required[0].name: "no_such_field"})  # as the App sends
        invalid = _invalid_inputs(spec, ds.view(), params)
        assert required[0].name in invalid and "no_such_field" in invalid[required[0].name]
    finally:
        ds.delete()


@pytest.mark.parametrize("name", STAGES)
def test_every_operator_declares_its_run_summary_output(name):
    from types import SimpleNamespace

    import fiftyone.operators as foo

    output = foo.get_operator(f"{PLUGIN}/{name}").resolve_output(SimpleNamespace(params={}))
    assert output is not None, "without resolve_output the App shows no summary after a run"
    assert {"processed", "skipped", "failed", "errors"} <= set(output.type.properties)


@pytest.mark.parametrize("name", STAGES)
def test_sdk_form_and_call_take_the_same_options_with_the_same_defaults(name):
    import fiftyone.operators as foo
    import fiftyone.operators.types as types

    from operators.forms import build_form

    spec, sdk = get_stage(name)
    python_only = {o.name for o in spec.all_options() if o.info.python_only}
    sdk_params = {k: p.default for k, p in inspect.signature(sdk).parameters.items() if k != "samples"}
    call = inspect.signature(foo.get_operator(f"{PLUGIN}/{name}").__call__).parameters
    call_params = {k: p.default for k, p in call.items() if k not in ("sample_collection", "delegate")}
    assert call_params == {k: v for k, v in sdk_params.items() if k not in python_only}

    form: dict[str, Any] = {}
    for params in _form_variants(spec):
        inputs = types.Object()
        build_form(spec, inputs, params)
        form.update(
            {k: p.default for k, p in inputs.properties.items() if not isinstance(p.view, types.Notice)}
        )
    assert set(form) == set(call_params)
    # a declared machine-dependent form default (e.g. no SAM checkpoint here) is the form's start, by design
    here = {o.name: o.info.form_default()[0] for o in spec.all_options() if o.info.form_default}
    for key, default in call_params.items():
        default = here.get(key, default)
        shown = form[key]
        if default is inspect.Parameter.empty:  # a required field: the form starts empty
            assert shown in (None, ""), key
            continue
        expected = "" if default is None and isinstance(shown, str) else default
        expected = list(expected) if isinstance(expected, tuple) else expected
        assert shown == expected, key


def _form_variants(spec: Any) -> list[dict[str, Any]]:
    """Params that show every conditional input at least once."""
    variants = [{}]
    for option in spec.all_options():
        for name, allowed in (option.info.show_if or {}).items():
            variants.extend({name: value} for value in allowed)
    return variants


def _user_value(label_type: str) -> Any:
    import fiftyone as fo

    return {
        "Segmentation": lambda: fo.Segmentation(mask=np.full((4, 4), 7, np.uint8)),
        "Detections": lambda: fo.Detections(
            detections=[fo.Detection(label="mine", bounding_box=[0, 0, 0.5, 0.5])]
        ),
        "Heatmap": lambda: fo.Heatmap(map=np.full((4, 4), 0.25, np.float32)),
        "float": lambda: 0.125,
        "int": lambda: 7,
        "dict": lambda: {"mine": 1},
        "str": lambda: "my note",
    }[label_type]()


def _user_content_cases(spec: Any, example: dict[str, Any], workdir: Path) -> list[tuple[str, Any]]:
    """(description, installer) for each output role of the example; an installer puts a user's content there."""
    if spec.plans_outputs:
        name = example.get("name")
        return [
            (f"sample tag '{name}'", lambda ds: ds.take(1, seed=0).tag_samples(name)),
            (f"saved view '{name}'", lambda ds: ds.save_view(name, ds.limit(1))),
        ]
    options = _options_of(spec, example)
    outputs = options.output_fields()
    cases = [(f"field '{o.name}'", _field_installer(o.name, o.label_type)) for o in outputs]
    cases.append(
        (f"error field '{outputs[0].name}_error'", _field_installer(f"{outputs[0].name}_error", "str"))
    )
    if example.get("mask_dir"):
        for o in outputs:
            if o.label_type == SEGMENTATION:
                cases.append(
                    (f"mask files of '{o.name}'", _file_installer(Path(example["mask_dir"]) / o.name))
                )
    if hasattr(options, "run_record"):
        cases.append((f"run '{options.eval_key}'", _run_installer(options.eval_key)))
    return cases


def _field_installer(name: str, label_type: str) -> Any:
    def install(ds: Any) -> None:
        ds.set_values(name, [_user_value(label_type) for _ in range(len(ds))])

    return install


def _file_installer(directory: Path) -> Any:
    def install(ds: Any) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        for sid in ds.values("id"):
            (directory / f"{sid}.png").write_bytes(b"the user's own mask file")

    return install


def _run_installer(key: str) -> Any:
    def install(ds: Any) -> None:
        import fiftyone.core.runs as fors

        ds.register_run(key, fors.RunConfig(method="users_own_run"))

    return install


@pytest.mark.parametrize("name", STAGES)
def test_outputs_holding_user_content_are_refused_without_overwrite(workdir, name):
    import fiftyone as fo

    spec, sdk = get_stage(name)
    example = stage_example(name, workdir)
    refused = []
    for i, (description, install) in enumerate(_user_content_cases(spec, example, workdir)):
        ds = contract_dataset(fo.Dataset(), workdir / f"case{i}")
        install(ds)
        before = snapshot(ds, [workdir / "masks"])
        for skip_existing in (False, True):
            with pytest.raises(StageParameterError) as err:
                sdk(ds, **example, skip_existing=skip_existing)
            assert err.value.remedy, description
            assert not any(changes(before, snapshot(ds, [workdir / "masks"])).values()), description
        summary = sdk(ds, **example, overwrite=True)  # the remedy works
        assert summary is not None and getattr(summary, "failed", 0) == 0, description
        refused.append(description)
        ds.delete()
    assert refused
    print(f"\n{name}: user content refused without overwrite (also under skip_existing): {refused}")
