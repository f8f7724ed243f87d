"""Operator forms built from a stage's declaration, and form params turned back into SDK keyword arguments.

No option is named and no default is written here: labels, help, defaults, ranges and choices all come from the
stage's declaration (:mod:`samseg_core.stages.options`), field pickers list the fields of the declared label
type, and the stage's own validation marks a bad input invalid inline, before Execute.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import fiftyone.operators.types as types

from samseg_core.errors import StageParameterError
from samseg_core.stages.options import INPUT, INPUT_RUN, OUTPUT, OUTPUT_RUN, QUEUE, OptionSpec

#: Form property that carries a validation error no single input owns.
FORM_ERROR = "samseg_error"
_TEXT_KINDS = ("str", "any")


def form_options(spec: Any) -> list[OptionSpec]:
    """The options a stage's form and ``__call__`` carry: every declared option except Python-only ones."""
    return [option for option in spec.all_options() if not option.info.python_only]


def shown(option: OptionSpec, params: Mapping[str, Any], starts: Mapping[str, Any]) -> bool:
    """Whether ``option`` appears in the form given the current ``params`` (its ``show_if`` condition);
    ``starts`` holds each option's starting value (:func:`starting_values`) for params not given yet."""
    for name, allowed in (option.info.show_if or {}).items():
        current = params.get(name)
        if current is None:
            current = starts.get(name)
        if current not in allowed:
            return False
    return True


def starting_values(options: Mapping[str, OptionSpec]) -> tuple[dict[str, Any], dict[str, str]]:
    """Each option's starting value in a form (its machine-dependent ``form_default`` where declared, else its
    default), and the reasons of the machine-dependent ones; each ``form_default`` is asked once per form."""
    starts, reasons = {}, {}
    for name, option in options.items():
        if option.info.form_default is None:
            starts[name] = option.default
            continue
        starts[name], reason = option.info.form_default()
        if reason:
            reasons[name] = reason
    return starts, reasons


def build_form(spec: Any, inputs: types.Object, params: Mapping[str, Any], samples: Any = None) -> None:
    """Adds one input per form option of ``spec`` to ``inputs`` (field pickers list ``samples``' fields)."""
    options = {option.name: option for option in form_options(spec)}
    starts, reasons = starting_values(options)
    for option in options.values():
        if shown(option, params, starts):
            if option.name in reasons:
                inputs.view(f"{option.name}_note", types.Notice(label=reasons[option.name]))
            start = starts[option.name] if option.info.form_default is not None else None
            add_input(inputs, option, samples, start)


def add_input(inputs: types.Object, option: OptionSpec, samples: Any = None, start: Any = None) -> None:
    """Adds the input of one declared option: a field or run picker, a checkbox, a number, a choice or text;
    ``start`` (a choice's machine-dependent starting value) replaces the declared default."""
    common = {"label": option.label, "description": option.info.help, "required": False}
    if option.role in (INPUT, INPUT_RUN):
        _add_picker(inputs, option, _picker_choices(option, samples), common)
    elif option.info.suggestions:
        _add_suggestions(inputs, option, common)
    elif option.role in (OUTPUT, OUTPUT_RUN, QUEUE) or option.kind in _TEXT_KINDS:
        default = option.default if isinstance(option.default, str) else ""
        if default and option.role in (OUTPUT, OUTPUT_RUN) and samples is not None:
            default = fresh_output_name(samples, default, run=option.role == OUTPUT_RUN)
        inputs.str(option.name, default=default, **common)
    elif option.kind == "bool":
        inputs.bool(option.name, default=option.default, view=types.CheckboxView(), **common)
    elif option.kind in ("int", "float"):
        number = inputs.int if option.kind == "int" else inputs.float
        low = option.info.ge if option.info.ge is not None else option.info.gt
        number(option.name, default=option.default, min=low, max=option.info.le, **common)
    elif option.kind in ("choice", "choices"):
        _add_choice(inputs, option, list(option.choices), common, default=start)
    elif option.kind == "list":
        default = None if option.default is None else list(option.default)  # None: unset, not "empty"
        inputs.list(option.name, types.String(), default=default, **common)
    else:
        raise TypeError(f"no form input for option {option.name} of kind {option.kind}")


def fresh_output_name(samples: Any, name: str, *, run: bool = False) -> str:
    """``name``, or ``name_2``, ``name_3`` ... when ``name`` is a field (or run key) samseg did not create:
    a form's default output never names someone else's data."""
    from samseg_core.schema import field_owner
    from samseg_core.stages.eval_runs import KINDS, list_samseg_runs

    dataset = samples._dataset
    ours = {key for kind in KINDS for key in list_samseg_runs(dataset, kind)} if run else set()

    def taken(candidate: str) -> bool:
        if run:
            return candidate in dataset.list_runs() and candidate not in ours
        return dataset.get_field(candidate) is not None and field_owner(dataset, candidate) is None

    if not taken(name):
        return name
    return next(f"{name}_{i}" for i in range(2, 10_000) if not taken(f"{name}_{i}"))


def _add_suggestions(inputs: types.Object, option: OptionSpec, common: dict) -> None:
    """Free text with the declared values offered (e.g. SAM types and hub ids; any other spec may be typed)."""
    view = types.AutocompleteView(label=option.label, allow_user_input=True)
    for value in option.info.suggestions:
        view.add_choice(value, label=value)
    default = option.default if isinstance(option.default, str) else ""
    inputs.str(option.name, default=default, view=view, **common)


def _picker_choices(option: OptionSpec, samples: Any) -> list[str] | None:
    if samples is None:
        return None
    if option.role == INPUT:
        from samseg_core.schema import fields_holding

        return fields_holding(samples, option.info.label_type)
    from samseg_core.stages.eval_runs import list_samseg_runs

    return [key for kind in option.info.run_kinds for key in list_samseg_runs(samples, kind)]


def _add_picker(inputs: types.Object, option: OptionSpec, choices: list[str] | None, common: dict) -> None:
    """A dropdown of the existing fields (or runs) of the declared type; free text when none is known."""
    if option.many:
        dropdown = types.Dropdown(label=option.label, multiple=True)
        for choice in choices or []:
            dropdown.add_choice(choice, label=choice)
        inputs.list(option.name, types.String(), default=list(option.default or ()), view=dropdown, **common)
        return
    if not choices:
        inputs.str(option.name, default=option.default or "", **common)
        return
    default = option.default if option.default in choices else (choices[0] if option.info.required else None)
    values = choices if option.info.required else ["", *choices]
    _add_choice(inputs, option, values, common, default=default if default is not None else "")


def _add_choice(
    inputs: types.Object, option: OptionSpec, values: list[Any], common: dict, default: Any = None
) -> None:
    dropdown = types.Dropdown(label=option.label, multiple=option.kind == "choices")
    for value in values:
        dropdown.add_choice(value, label=str(value) if value != "" else "(none)")
    if option.kind == "choices":
        default_list = list(option.default or () if default is None else default)
        inputs.list(option.name, types.String(), default=default_list, view=dropdown, **common)
    else:
        inputs.enum(
            option.name,
            dropdown.values(),
            default=option.default if default is None else default,
            view=dropdown,
            **common,
        )


def kwargs_from_params(spec: Any, params: Mapping[str, Any]) -> dict[str, Any]:
    """SDK keyword arguments of the form options present in ``params``; an absent or None param keeps the SDK's
    default, an empty text means None (e.g. "do not write this output"), lists become tuples. Zero stays zero:
    the stage's own checks decide whether a value is allowed."""
    out: dict[str, Any] = {}
    for option in form_options(spec):
        if option.name not in params or params[option.name] is None:
            continue
        value = params[option.name]
        if isinstance(value, str) and value == "" and option.kind in (*_TEXT_KINDS, "choice"):
            value = None
        elif isinstance(value, list):
            value = tuple(value)
        out[option.name] = value
    return out


def params_from_kwargs(spec: Any, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Operator params for SDK keyword arguments (the inverse of :func:`kwargs_from_params`): None becomes an
    empty text for text options, tuples become lists."""
    params: dict[str, Any] = {}
    for option in form_options(spec):
        if option.name not in kwargs:
            continue
        value = kwargs[option.name]
        if value is None:
            value = "" if option.kind in _TEXT_KINDS or option.role is not None else None
        elif isinstance(value, tuple):
            value = list(value)
        params[option.name] = value
    return params


def mark_invalid(inputs: types.Object, error: StageParameterError, spec: Any = None) -> None:
    """Marks the input ``error.param`` names invalid with the error in the form's words (labels, not Python
    arguments; see :func:`in_form_words`), or adds a form-level error."""
    message = in_form_words(spec, error) if spec is not None else str(error)
    prop = inputs.properties.get(error.param)
    if prop is None:
        inputs.view(FORM_ERROR, types.Error(label=message), invalid=True, error_message=message)
        return
    prop.invalid = True
    prop.error_message = message


def _as_instructions(remedy: str) -> str:
    """``pass 'Resume' ticked`` -> ``tick 'Resume'``; ``'Label' = v`` -> ``set 'Label' to v``."""
    remedy = re.sub(r"\bpass (?=')", "", remedy)
    remedy = re.sub(r"('[^']+') (un)?ticked", lambda m: f"{m.group(2) or ''}tick {m.group(1)}", remedy)
    return re.sub(r"('[^']+') = ", r"set \1 to ", remedy)


def in_form_words(spec: Any, error: StageParameterError) -> str:
    """``error`` as a form user reads it: it starts with the form label of the option at fault (its argument name
    in brackets, for callers of the operator from Python), and each option written as Python in the message
    (``skip_existing=True``, ``sam_checkpoint=``, ``mask_dir``) becomes its label (``tick 'Resume'``).

    Bare option names are replaced only when they contain an underscore, so that ordinary words in a message
    ("the masks", "the mode") stay as they are.
    """
    labels = {option.name: option.label for option in spec.all_options() if not option.info.python_only}
    if not labels:
        return str(error)
    names = "|".join(sorted(map(re.escape, labels), key=len, reverse=True))
    pattern = re.compile(rf"(?<![\w.])({names})(=(?:'[^']*'|\"[^\"]*\"|[^\s,;)]*))?(?![\w(])")

    def label_of(match: re.Match) -> str:
        name, assignment = match.group(1), match.group(2)
        if assignment is None and "_" not in name:
            return name
        label = f"'{labels[name]}'"
        value = (assignment or "=")[1:].rstrip(".")
        if value in ("True", "False"):
            return f"{label} {'ticked' if value == 'True' else 'unticked'}"
        return f"{label} = {value}" if value and value != "..." else label

    problem = pattern.sub(label_of, error.problem)
    remedy = _as_instructions(pattern.sub(label_of, error.remedy))
    # the label for the App's user, the argument for a Python caller of the operator (same validation)
    label = labels.get(error.param)
    head = f"{label} ({error.param})" if label and label != error.param else error.param
    return f"{head}: {problem}" + (f". {remedy}" if remedy else "")
