"""One FiftyOne operator per registered stage, generated from the stage's declaration.

The form, the parsing of its params and the operator's ``__call__`` come from the stage registry
(:mod:`samseg_core.stages.registry`); ``execute`` makes one SDK call. Operators hold no defaults and no checks
of their own: the stage's validation runs in ``resolve_input`` (a bad input is marked invalid in the form, and
``foo.execute_operator`` refuses it with the same message) and again in the SDK call.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import fiftyone.operators as foo
import fiftyone.operators.types as types

from samseg_core.errors import StageParameterError
from samseg_core.stages.options import OUTPUT, OUTPUT_RUN, QUEUE

from . import forms
from .app_refresh import field_names, show_new_fields

#: Views larger than this default to a background (delegated) run when background runs are enabled.
DELEGATE_ABOVE_SAMPLES = 25
#: What the form says when a large view runs now because no orchestrator can take it.
BACKGROUND_HOWTO = (
    "To queue long runs in the background instead, start the App with FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS=true "
    "and run a worker with `fiftyone delegated launch`; the samseg QA panel (Background runs) and "
    "`fiftyone delegated list` show queued runs."
)


def background_runs_enabled() -> bool:
    """Whether a stock FiftyOne can queue delegated runs here (its legacy orchestrators, i.e. local workers)."""
    import fiftyone as fo

    return bool(fo.config.allow_legacy_orchestrators)


class StageOperator(foo.Operator):
    """Base of the generated stage operators; subclasses set ``SPEC`` and ``SDK`` (see :func:`operator_for`)."""

    SPEC: Any = None
    SDK: Callable[..., Any] | None = None

    @property
    def config(self) -> foo.OperatorConfig:
        return foo.OperatorConfig(
            name=self.SPEC.name,
            label=f"samseg: {self.SPEC.label}",
            description=self.SPEC.description,
            dynamic=True,
            allow_immediate_execution=True,
            allow_delegated_execution=True,
            icon="/assets/icon.svg",
        )

    def resolve_input(self, ctx: Any) -> types.Property:
        inputs = types.Object()
        view = _target_view(ctx)
        forms.build_form(self.SPEC, inputs, ctx.params, view)
        _explain_execution(inputs, view)
        if view is not None:
            try:
                plan = self.SPEC.validate(view, **forms.kwargs_from_params(self.SPEC, ctx.params))
            except StageParameterError as err:
                forms.mark_invalid(inputs, err, self.SPEC)
            else:
                _warn_stale(inputs, plan)
        return types.Property(inputs, view=types.View(label=f"samseg: {self.SPEC.label}"))

    def resolve_delegation(self, ctx: Any) -> bool | None:
        """``delegate`` given by ``__call__`` decides; otherwise the request does (the App's choice)."""
        delegate = ctx.params.get("delegate")
        return None if delegate is None else bool(delegate)

    def resolve_run_name(self, ctx: Any) -> str:
        """The name a background run is listed under (QA panel, ``fiftyone delegated list``): the operator's
        label, the output it writes and the number of samples."""
        name = f"samseg: {self.SPEC.label}"
        output = _primary_output(self.SPEC, ctx.params)
        view = _target_view(ctx)
        details = [f"→ {output}"] if output else []
        details += [f"{len(view)} samples"] if view is not None else []
        return f"{name} ({', '.join(details)})" if details else name

    def resolve_execution_options(self, ctx: Any) -> foo.ExecutionOptions:
        """Running now is always offered; a background run only where an orchestrator can take it, and then it
        is the default for views over :data:`DELEGATE_ABOVE_SAMPLES` samples."""
        delegate = ctx.params.get("delegate")
        if delegate is not None:
            return foo.ExecutionOptions(
                allow_immediate_execution=not delegate, allow_delegated_execution=bool(delegate)
            )
        background = background_runs_enabled()
        view = _target_view(ctx)
        large = view is not None and len(view) > DELEGATE_ABOVE_SAMPLES
        return foo.ExecutionOptions(
            allow_immediate_execution=True,
            allow_delegated_execution=background,
            default_choice_to_delegated=background and large,
        )

    def execute(self, ctx: Any) -> dict[str, Any]:
        kwargs = forms.kwargs_from_params(self.SPEC, ctx.params)
        kwargs["progress"] = lambda fraction: ctx.set_progress(progress=fraction, label=f"{fraction:.0%}")
        if not ctx.delegated:
            kwargs["num_workers"] = 0  # DataLoader workers only make sense in a delegated worker process
        before = [] if ctx.delegated else field_names(ctx.dataset)
        result = type(self).SDK(ctx.target_view(), **kwargs)
        if not ctx.delegated:
            show_new_fields(ctx, before)
        summary = result.to_dict()
        summary.setdefault("table", _results_table(summary))
        return summary

    def resolve_output(self, ctx: Any) -> types.Property:
        outputs = types.Object()
        for key in ("processed", "skipped", "failed"):
            outputs.int(key, label=key.capitalize())
        outputs.float("seconds", label="Seconds")
        outputs.str("table", label="Results", view=types.MarkdownView())
        outputs.obj("errors", label="Errors (sample id -> message)", view=types.JSONView())
        return types.Property(outputs, view=types.View(label=f"samseg: {self.SPEC.label}"))


_SHOWN_APART = {"processed", "skipped", "failed", "seconds", "errors", "table"}


def _results_table(summary: dict[str, Any]) -> str:
    """The summary's scalar results, one per line in a code block (the counts are shown apart)."""
    rows = [
        (key, f"{value:.4g}" if isinstance(value, float) else str(value))
        for key, value in summary.items()
        if key not in _SHOWN_APART and isinstance(value, (str, int, float, bool))
    ]
    width = max((len(key) for key, _ in rows), default=0)
    lines = [f"{key.ljust(width)}  {value}" for key, value in rows]
    return "```\n" + "\n".join(lines) + "\n```" if lines else ""


def _warn_stale(inputs: types.Object, plan: Any) -> None:
    """A warning in the form when this run replaces a field that existing runs were computed from."""
    if plan is None:
        return
    for field_name, readers in plan.stale_readers().items():
        inputs.view(
            f"stale_{field_name}",
            types.Warning(
                label=f"This run replaces '{field_name}', which run(s) {', '.join(readers)} were computed from: "
                "they will be marked stale in the QA panel until you re-run them."
            ),
        )


def _explain_execution(inputs: types.Object, view: Any) -> None:
    """A line on how this run will execute: now with progress, or (large views) how to run it in the background."""
    if view is None:
        return
    count = len(view)
    if background_runs_enabled():
        text = (
            f"{count} samples. Background runs are enabled: choose Schedule to queue this run for a "
            "`fiftyone delegated launch` worker, or Execute to run it now. A scheduled run is listed with its "
            "state (queued, running, completed, failed) under Background runs in the samseg QA panel, and by "
            "`fiftyone delegated list`."
        )
    elif count > DELEGATE_ABOVE_SAMPLES:
        text = f"{count} samples: Execute runs them now, with progress shown here. " + BACKGROUND_HOWTO
    else:
        return
    inputs.view("execution_note", types.Notice(label=text))


def _primary_output(spec: Any, params: Any) -> str | None:
    """The field, run key or queue name a run of ``spec`` with form ``params`` writes first (None: unknown)."""
    for option in forms.form_options(spec):
        if option.role in (OUTPUT, OUTPUT_RUN, QUEUE):
            value = params.get(option.name) or option.default
            return value if isinstance(value, str) and value else None
    return None


def _target_view(ctx: Any) -> Any:
    try:
        return ctx.target_view() if ctx.dataset is not None else None
    except Exception:  # no dataset in the request yet
        return None


def _call_signature(spec: Any) -> inspect.Signature:
    sdk = spec.signature()
    names = {option.name for option in forms.form_options(spec)}
    params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    params.append(inspect.Parameter("sample_collection", inspect.Parameter.POSITIONAL_OR_KEYWORD))
    params += [p for name, p in sdk.parameters.items() if name in names]
    params.append(
        inspect.Parameter("delegate", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=bool)
    )
    return inspect.Signature(params)


def operator_for(spec: Any, sdk: Callable[..., Any]) -> type[StageOperator]:
    """The operator class of a registered stage: its config, form and ``__call__`` all from ``spec``."""
    signature = _call_signature(spec)

    def __call__(self: StageOperator, *args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(self, *args, **kwargs)
        values = dict(bound.arguments)
        values.pop("self")
        samples = values.pop("sample_collection")
        delegate = bool(values.pop("delegate", False))
        normalize = getattr(spec.options, "normalize", None)
        params = forms.params_from_kwargs(spec, normalize(values) if normalize else values)
        ctx = {"view": samples.view(), "params": {**params, "delegate": delegate}}
        result = foo.execute_operator(self.uri, ctx, request_delegation=delegate)
        return result if delegate else result.result

    __call__.__signature__ = signature
    __call__.__doc__ = (
        f"Runs ``{spec.name}`` on ``sample_collection`` through ``foo.execute_operator``, with exactly the SDK's "
        f"options (see ``samseg_core.{spec.name}``) and ``delegate``: queue a delegated operation instead of "
        "running now.\n\nReturns:\n    the run summary dict, or the delegated operation's ExecutionResult when "
        "``delegate``."
    )
    name = "".join(part.capitalize() for part in spec.name.split("_"))
    return type(name, (StageOperator,), {"SPEC": spec, "SDK": staticmethod(sdk), "__call__": __call__})
