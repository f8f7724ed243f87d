"""The stage registry: each stage declared once, its SDK function derived from the declaration.

A stage module declares a :class:`StageSpec` (name, form label, its options dataclass, its batch-size default)
and decorates its implementation with :func:`stage`. The decorator returns the public SDK function: plain
keyword arguments in FiftyOne's ``apply_model`` style, whose signature, defaults and docstring come from the
declaration. Calling it checks every option, then every field role against the collection
(:func:`samseg_core.stages.plan.plan_stage`), and only then runs the implementation, which receives the validated
options and the :class:`~samseg_core.stages.plan.StagePlan`. The operators (``operators/stage_operator.py``)
build their forms and ``__call__`` from the same declaration.
"""

from __future__ import annotations

import importlib
import inspect
import textwrap
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from samseg_core.stages.options import OptionSpec, check_option, option_specs
from samseg_core.stages.plan import StagePlan, check_inputs, plan_stage
from samseg_core.stages.run_options import RunOptions, check_run_options, run_option_specs

#: The modules that declare stages (imported on first use of the registry).
STAGE_MODULES = (
    "samseg_core.stages.baseline",
    "samseg_core.stages.refinement",
    "samseg_core.stages.prompt_study",
    "samseg_core.stages.voting",
    "samseg_core.stages.engine",
    "samseg_core.stages.evaluation",
    "samseg_core.stages.agreement",
    "samseg_core.stages.failure_modes",
    "samseg_core.stages.curation",
    "samseg_core.stages.fusion",
)

Implementation = Callable[[StagePlan, Any], Any]


@dataclass(frozen=True)
class StageSpec:
    """The one declaration of a stage.

    Attributes:
        name: the SDK function's and the operator's name.
        label: the operator's label (shown as ``samseg: <label>``).
        description: one line for the operator list.
        options: the frozen dataclass of the stage's own options and field roles.
        batch_size: this stage's ``batch_size`` default.
        positional: options that may also be passed positionally after the samples, in this order.
        aliases: old option names accepted for one release (with a warning) -> the new name.
        plans_outputs: the stage plans its own writes (e.g. a relabel queue's tags and views) instead of
            going through :func:`~samseg_core.stages.plan.plan_stage`.
    """

    name: str
    label: str
    description: str
    options: type
    batch_size: int = 4
    positional: tuple[str, ...] = ()
    aliases: Mapping[str, str] = field(default_factory=dict)
    plans_outputs: bool = False
    next_step: str = ""  # what a user usually does after this stage (shown in the run summary)

    def stage_options(self) -> tuple[OptionSpec, ...]:
        """The stage's own options (not the run options)."""
        return option_specs(self.options)

    def run_options(self) -> tuple[OptionSpec, ...]:
        """The shared run options with this stage's ``batch_size`` default."""
        return run_option_specs(self.batch_size)

    def all_options(self) -> tuple[OptionSpec, ...]:
        """Every option the SDK function takes, stage options first."""
        return (*self.stage_options(), *self.run_options())

    def signature(self) -> inspect.Signature:
        """The SDK function's signature: the collection, then every option with its declared default."""
        params = [inspect.Parameter("samples", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
        by_name = {spec.name: spec for spec in self.all_options()}
        for name in self.positional:
            params.append(_parameter(by_name[name], inspect.Parameter.POSITIONAL_OR_KEYWORD))
        for spec in self.all_options():
            if spec.name not in self.positional:
                params.append(_parameter(spec, inspect.Parameter.KEYWORD_ONLY))
        return inspect.Signature(params)

    def parse(self, values: Mapping[str, Any]) -> tuple[Any, RunOptions]:
        """Checks each value against its declaration and returns ``(options, run options)``; values not given
        take their declared defaults. Raises StageParameterError naming the first bad option."""
        normalize = getattr(self.options, "normalize", None)
        values = normalize(dict(values)) if normalize is not None else values
        stage_values = {}
        for spec in self.stage_options():
            stage_values[spec.name] = check_option(spec, values.get(spec.name, spec.default))
        run_values = {}
        for spec in self.run_options():
            run_values[spec.name] = check_option(spec, values.get(spec.name, spec.default))
        options, run = self.options(**stage_values), RunOptions(**run_values)
        check_run_options(run)
        return options, run

    def validate(self, samples: Any, **values: Any) -> StagePlan | None:
        """Checks options and field roles against ``samples`` as a call would, writing nothing (forms use it)."""
        options, run = self.parse(_renamed(self, values))
        if self.plans_outputs:
            check_inputs(samples, options, run)
            return None
        return plan_stage(self.name, samples, options, run)


_STAGES: dict[str, tuple[StageSpec, Callable[..., Any]]] = {}


def stage(spec: StageSpec) -> Callable[[Implementation], Callable[..., Any]]:
    """Registers ``spec`` and turns its implementation ``impl(plan, options)`` into the SDK function.

    The implementation's docstring gives the summary and the ``Returns:`` section; the ``Args:`` section is
    generated from the declarations' help texts.
    """

    def decorate(impl: Implementation) -> Callable[..., Any]:
        signature = spec.signature()

        def sdk(*args: Any, **kwargs: Any) -> Any:
            try:
                bound = signature.bind(*args, **_renamed(spec, kwargs))
            except TypeError as err:
                raise TypeError(f"{spec.name}(): {err}") from None
            values = dict(bound.arguments)
            samples = values.pop("samples")
            options, run = spec.parse(values)
            if spec.plans_outputs:
                check_inputs(samples, options, run)
                return _with_next_step(impl(samples, options, run), spec)
            return _with_next_step(impl(plan_stage(spec.name, samples, options, run), options), spec)

        sdk.__name__ = sdk.__qualname__ = spec.name
        sdk.__module__ = impl.__module__
        sdk.__signature__ = signature
        sdk.__doc__ = _docstring(impl.__doc__ or "", spec)
        sdk.__wrapped_stage__ = spec  # lets tools find the declaration from the function
        _STAGES[spec.name] = (spec, sdk)
        return sdk

    return decorate


def _with_next_step(result: Any, spec: StageSpec) -> Any:
    """The stage's result, with its declared next step in a run summary's ``extra``."""
    extra = getattr(result, "extra", None)
    if spec.next_step and isinstance(extra, dict):
        extra.setdefault("next_step", spec.next_step)
    return result


def _parameter(spec: OptionSpec, kind: inspect._ParameterKind) -> inspect.Parameter:
    default = inspect.Parameter.empty if spec.info.required and spec.default is None else spec.default
    return inspect.Parameter(spec.name, kind, default=default, annotation=spec.annotation)


def _renamed(spec: StageSpec, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(kwargs)
    for old, new in spec.aliases.items():
        if old in out:
            if new in out:
                raise TypeError(f"{spec.name}(): got both '{old}' (the old name) and '{new}'")
            warnings.warn(
                f"{spec.name}(): '{old}' is now called '{new}'; the old name goes away in the next release",
                FutureWarning,
                stacklevel=3,
            )
            out[new] = out.pop(old)
    return out


def _docstring(doc: str, spec: StageSpec) -> str:
    text = inspect.cleandoc(doc)
    head, _, returns = text.partition("\nReturns:")
    lines = ["Args:", "    samples: a FiftyOne dataset or view."]
    for option in spec.all_options():
        default = (
            "required" if option.info.required and option.default is None else f"default {option.default!r}"
        )
        lines.append(
            textwrap.fill(
                f"{option.name}: {option.info.help} ({default}).",
                110,
                initial_indent="    ",
                subsequent_indent="        ",
            )
        )
    out = head.rstrip() + "\n\n" + "\n".join(lines)
    return out + ("\n\nReturns:" + returns if returns else "")


def load_stages() -> None:
    """Imports every stage module, so the registry is complete."""
    for module in STAGE_MODULES:
        importlib.import_module(module)


def stage_specs() -> list[StageSpec]:
    """Every registered stage, in :data:`STAGE_MODULES` order."""
    load_stages()
    return [spec for spec, _ in _STAGES.values()]


def get_stage(name: str) -> tuple[StageSpec, Callable[..., Any]]:
    """The declaration and SDK function of stage ``name``."""
    load_stages()
    if name not in _STAGES:
        raise KeyError(f"no samseg stage '{name}'; stages: {sorted(_STAGES)}")
    return _STAGES[name]
