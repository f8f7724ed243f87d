"""Stage options declared once: type, default, range, choices, one-line help and field role of each option.

A stage's options are one frozen dataclass whose fields are made with :func:`option` (a plain setting),
:func:`input_field` / :func:`output_field` (a sample field the stage reads or writes, with the label type it
must hold), :func:`output_run` (an ``eval_key``: a FiftyOne run plus ``<eval_key>_*`` fields),
:func:`input_run` (an existing samseg run) or :func:`queue_name` (tags and saved views). The SDK signature, the
operator's form and the operator's ``__call__`` are all derived from these declarations (see
:mod:`samseg_core.stages.registry`), and :func:`check_option` validates a value against its declaration.

This module imports no FiftyOne: label types are named by strings.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from samseg_core.errors import StageParameterError
from samseg_core.label_types import (  # noqa: F401  (re-exported: stages declare roles with these)
    DETECTIONS,
    DICT,
    FLOAT,
    HEATMAP,
    INT,
    LABEL_TYPES,
    SEGMENTATION,
    STRING,
)

INPUT, OUTPUT, OUTPUT_RUN, INPUT_RUN, QUEUE = "input", "output", "output_run", "input_run", "queue"
ROLES = (INPUT, OUTPUT, OUTPUT_RUN, INPUT_RUN, QUEUE)

_METADATA_KEY = "samseg"


@dataclass(frozen=True)
class OptionInfo:
    """What a declaration says about one option besides its type and default."""

    help: str
    label: str | None = None
    ge: float | None = None
    le: float | None = None
    gt: float | None = None
    role: str | None = None
    label_type: str | None = None
    run_kinds: tuple[str, ...] = ()
    required: bool = False
    python_only: bool = False
    show_if: Mapping[str, tuple[Any, ...]] | None = None
    suggestions: tuple[str, ...] = ()
    form_default: Any = None  # callable () -> (value, reason): what a form offers first on this machine


def option(
    default: Any,
    help: str,
    *,
    label: str | None = None,
    ge: float | None = None,
    le: float | None = None,
    gt: float | None = None,
    required: bool = False,
    python_only: bool = False,
    show_if: Mapping[str, Sequence[Any]] | None = None,
    suggestions: Sequence[str] = (),
    form_default: Any = None,
) -> Any:
    """Declares a stage option.

    Args:
        default: the default (tuples, not lists, for sequences: options are frozen).
        help: one line shown as the form's help and in the SDK docstring.
        label: the form label (default: the name, capitalised, underscores as spaces).
        ge: smallest allowed value (numbers).
        le: largest allowed value (numbers).
        gt: the value must be greater than this (numbers).
        required: the caller must give a value (the default None only marks it missing).
        python_only: a Python object (a built model, a cache, a callable) that forms and ``__call__`` cannot
            carry; the SDK takes it, the operator does not show it.
        show_if: the form shows the option only when each named option has one of the given values.
        suggestions: values a form offers for a free-text option (any other value may still be typed).
        form_default: a callable returning ``(value, reason)``: the value a form starts with on this machine
            when it differs from ``default`` (e.g. no SAM checkpoint here), and the sentence saying why; the
            SDK's default stays ``default``.
    """
    info = OptionInfo(
        help=help,
        label=label,
        ge=ge,
        le=le,
        gt=gt,
        required=required,
        python_only=python_only,
        show_if={k: tuple(v) for k, v in show_if.items()} if show_if else None,
        suggestions=tuple(suggestions),
        form_default=form_default,
    )
    return dataclasses.field(default=default, metadata={_METADATA_KEY: info})


def _role(default: Any, help: str, role: str, label_type: str | None, **kw: Any) -> Any:
    show_if = kw.pop("show_if", None)
    info = OptionInfo(
        help=help,
        role=role,
        label_type=label_type,
        show_if={k: tuple(v) for k, v in show_if.items()} if show_if else None,
        **kw,
    )
    return dataclasses.field(default=default, metadata={_METADATA_KEY: info})


def input_field(
    default: Any,
    label_type: str,
    help: str,
    *,
    required: bool = True,
    label: str | None = None,
    show_if: Mapping[str, Sequence[Any]] | None = None,
) -> Any:
    """Declares a sample field the stage reads (a name, or a tuple of names when annotated as a tuple).

    With ``required`` a value must be given; otherwise None means "not used". The field must exist on the
    collection and hold ``label_type``.
    """
    return _role(default, help, INPUT, label_type, required=required, label=label, show_if=show_if)


def output_field(
    default: Any,
    label_type: str,
    help: str,
    *,
    label: str | None = None,
    show_if: Mapping[str, Sequence[Any]] | None = None,
) -> Any:
    """Declares a sample field the stage writes (None: not written, when the annotation allows None)."""
    return _role(default, help, OUTPUT, label_type, label=label, show_if=show_if)


def output_run(default: str, kind: str, help: str, *, label: str | None = None) -> Any:
    """Declares the key of the FiftyOne run the stage stores (``eval_key``) and prefixes its fields with."""
    return _role(default, help, OUTPUT_RUN, None, run_kinds=(kind,), required=True, label=label)


def input_run(
    default: Any, kinds: Sequence[str], help: str, *, required: bool = False, label: str | None = None
) -> Any:
    """Declares the key of an existing samseg run of one of ``kinds`` that the stage reads."""
    return _role(default, help, INPUT_RUN, None, run_kinds=tuple(kinds), required=required, label=label)


def mask_dir_option() -> Any:
    """Declares ``mask_dir``: where a stage writing segmentations puts them as PNGs (None: in the database)."""
    return option(
        None, "Write masks as PNGs under <mask_dir>/<field>/ instead of into the database (large datasets)",
        label="Mask directory (optional)",
    )  # fmt: skip


def queue_name(default: str, help: str, *, label: str | None = None) -> Any:
    """Declares the name of a relabel queue: the sample and label tag and the saved views the stage owns."""
    return _role(default, help, QUEUE, None, required=True, label=label)


@dataclass(frozen=True)
class OptionSpec:
    """One declared option: its name, resolved type, default and :class:`OptionInfo`."""

    name: str
    annotation: Any
    default: Any
    info: OptionInfo

    @property
    def label(self) -> str:
        """The form label."""
        return self.info.label or self.name.replace("_", " ").capitalize()

    @property
    def nullable(self) -> bool:
        """Whether None is an allowed value."""
        return type(None) in _union_members(self.annotation)

    @property
    def base(self) -> Any:
        """The annotation without ``None``."""
        members = [m for m in _union_members(self.annotation) if m is not type(None)]
        return members[0] if len(members) == 1 else typing.Union[tuple(members)]  # noqa: UP007

    @property
    def kind(self) -> str:
        """``bool``, ``int``, ``float``, ``str``, ``choice``, ``list``, ``choices`` (a tuple of choices) or
        ``any``."""
        base = self.base
        if base is bool:
            return "bool"
        if base is int:
            return "int"
        if base is float:
            return "float"
        if base is str:
            return "str"
        if typing.get_origin(base) is Literal:
            return "choice"
        if typing.get_origin(base) is tuple:
            item = typing.get_args(base)[0]
            return "choices" if typing.get_origin(item) is Literal else "list"
        return "any"

    @property
    def choices(self) -> tuple[Any, ...]:
        """The allowed values of a ``choice`` option or the items of a ``choices`` option."""
        base = self.base
        if typing.get_origin(base) is Literal:
            return typing.get_args(base)
        if typing.get_origin(base) is tuple and typing.get_origin(typing.get_args(base)[0]) is Literal:
            return typing.get_args(typing.get_args(base)[0])
        return ()

    @property
    def role(self) -> str | None:
        """The field role (:data:`ROLES`) or None for a plain setting."""
        return self.info.role

    @property
    def many(self) -> bool:
        """Whether a field-role option holds several field names."""
        return typing.get_origin(self.base) is tuple


def _union_members(annotation: Any) -> tuple[Any, ...]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


@functools.cache
def option_specs(options_class: type) -> tuple[OptionSpec, ...]:
    """The declared options of a stage options dataclass, in declaration order."""
    hints = typing.get_type_hints(options_class)
    specs = []
    for f in dataclasses.fields(options_class):
        info = f.metadata.get(_METADATA_KEY)
        if info is None:
            raise TypeError(f"{options_class.__name__}.{f.name} is not declared with option() or a role")
        specs.append(OptionSpec(f.name, hints[f.name], f.default, info))
    return tuple(specs)


def check_option(spec: OptionSpec, value: Any) -> Any:
    """Returns ``value`` normalised for ``spec`` (ints for integral floats, tuples for sequences), or raises
    :class:`StageParameterError` naming the option and what it accepts."""
    if value is None:
        if spec.info.required:
            raise StageParameterError(spec.name, "a value is required", f"pass {spec.name}=...")
        if spec.nullable or spec.kind == "any":
            return None
        raise StageParameterError(spec.name, "None is not allowed", _accepts(spec))
    checker = _CHECKERS.get(spec.kind)
    value = checker(spec, value) if checker else value
    if spec.role is not None:
        _check_field_names(spec, value)
    return value


def _accepts(spec: OptionSpec) -> str:
    kind = spec.kind
    if kind in ("choice", "choices"):
        return f"choose from {', '.join(map(repr, spec.choices))}"
    limits = [
        f">= {spec.info.ge:g}" if spec.info.ge is not None else "",
        f"> {spec.info.gt:g}" if spec.info.gt is not None else "",
        f"<= {spec.info.le:g}" if spec.info.le is not None else "",
    ]
    limit_text = " and ".join(t for t in limits if t)
    what = {"list": "a list of strings", "str": "a string"}.get(
        kind, f"{'an' if kind == 'int' else 'a'} {kind}"
    )
    return f"pass {what}{' ' + limit_text if limit_text else ''}" + (" or None" if spec.nullable else "")


def _check_bool(spec: OptionSpec, value: Any) -> bool:
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return bool(value)
    raise StageParameterError(spec.name, f"expected True or False, got {value!r}", _accepts(spec))


def _check_number(spec: OptionSpec, value: Any) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "__float__"):
        raise StageParameterError(spec.name, f"expected a number, got {value!r}", _accepts(spec))
    number = float(value)
    if math.isnan(number) or math.isinf(number):
        raise StageParameterError(spec.name, f"expected a finite number, got {value!r}", _accepts(spec))
    if spec.kind == "int":
        if number != int(number):
            raise StageParameterError(spec.name, f"expected a whole number, got {value!r}", _accepts(spec))
        number = int(number)
    info = spec.info
    out_of_range = (
        (info.ge is not None and number < info.ge)
        or (info.le is not None and number > info.le)
        or (info.gt is not None and number <= info.gt)
    )
    if out_of_range:
        raise StageParameterError(spec.name, f"{value!r} is out of range", _accepts(spec))
    return number


def _check_str(spec: OptionSpec, value: Any) -> str:
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if not isinstance(value, str):
        raise StageParameterError(spec.name, f"expected a string, got {type(value).__name__}", _accepts(spec))
    return value


def _check_choice(spec: OptionSpec, value: Any) -> Any:
    if value not in spec.choices:
        raise StageParameterError(spec.name, f"unknown value {value!r}", _accepts(spec))
    return value


def _as_tuple(spec: OptionSpec, value: Any) -> tuple[Any, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, Sequence) or isinstance(value, (set, frozenset)):
        return tuple(value)
    raise StageParameterError(spec.name, f"expected a list, got {type(value).__name__}", _accepts(spec))


def _check_choices(spec: OptionSpec, value: Any) -> tuple[Any, ...]:
    items = _as_tuple(spec, value)
    unknown = [v for v in items if v not in spec.choices]
    if unknown:
        raise StageParameterError(spec.name, f"unknown value(s) {unknown}", _accepts(spec))
    return tuple(dict.fromkeys(items))


def _check_list(spec: OptionSpec, value: Any) -> tuple[Any, ...]:
    items = _as_tuple(spec, value)
    item_type = typing.get_args(spec.base)[0]
    if item_type is str and not all(isinstance(v, str) for v in items):
        raise StageParameterError(spec.name, "every item must be a string", _accepts(spec))
    if item_type is int:  # the App's list inputs hold strings: "255" is the number 255
        numbers = [int(v) if isinstance(v, str) and v.strip().lstrip("-").isdigit() else v for v in items]
        return tuple(_check_number(dataclasses.replace(spec, annotation=int), v) for v in numbers)
    return items


_CHECKERS = {
    "bool": _check_bool,
    "int": _check_number,
    "float": _check_number,
    "str": _check_str,
    "choice": _check_choice,
    "choices": _check_choices,
    "list": _check_list,
}


def _check_field_names(spec: OptionSpec, value: Any) -> None:
    names = value if isinstance(value, tuple) else (value,)
    for name in names:
        if not isinstance(name, str) or not name.strip():
            raise StageParameterError(spec.name, f"{name!r} is not a field name", "pass a non-empty name")
        if spec.role in (OUTPUT, OUTPUT_RUN, QUEUE) and (name.startswith("_") or "." in name or "$" in name):
            raise StageParameterError(
                spec.name, f"'{name}' cannot be created", "use letters, digits and underscores (no '.', '$')"
            )
        if spec.role == OUTPUT_RUN and not name.isidentifier():
            raise StageParameterError(
                spec.name,
                f"'{name}' is not a valid run key",
                "use letters, digits and underscores, starting with a letter (e.g. samseg_iou)",
            )


def role_values(options: Any, *roles: str) -> dict[str, tuple[str, ...]]:
    """``{option name: field names}`` of the options of ``roles`` that hold a value."""
    out = {}
    for spec in option_specs(type(options)):
        value = getattr(options, spec.name)
        if spec.role in roles and value is not None:
            out[spec.name] = value if isinstance(value, tuple) else (value,)
    return out


@dataclass(frozen=True)
class OutputField:
    """A sample field a stage writes: its name, the label type it holds and the option that named it."""

    name: str
    label_type: str
    param: str


@dataclass(frozen=True)
class StageOptions:
    """Base of every stage's options dataclass: the output fields follow from the output-role options, in
    declaration order (the first is the primary output). Stages whose outputs are derived (a run's
    ``<eval_key>_*`` fields) override :meth:`output_fields`; :meth:`check` may add stage-specific checks."""

    def output_fields(self) -> list[OutputField]:
        """The fields this run writes, primary first."""
        out = []
        for spec in option_specs(type(self)):
            value = getattr(self, spec.name)
            if spec.role == OUTPUT and value is not None:
                names = value if isinstance(value, tuple) else (value,)
                out.extend(OutputField(name, spec.info.label_type, spec.name) for name in names)
        return out
