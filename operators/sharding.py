"""Operator: split a samseg stage into N delegated operations over disjoint shards, for several workers.

``shard_run`` queues one delegated operation of the chosen stage operator per shard (see
``samseg_core.sharding``): each operation's target view is its shard and its params are the stage's params plus
``skip_existing=True``, ``shard_index`` and ``num_shards``. Any number of ``fiftyone delegated launch`` workers
sharing the database (``FIFTYONE_DATABASE_URI``) take them from the queue; the QUEUED -> RUNNING claim is a
compare-and-set in MongoDB, so each shard runs once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import fiftyone.operators as foo
import fiftyone.operators.types as types
from fiftyone.operators.constants import ViewTarget
from fiftyone.operators.delegated import DelegatedOperationService
from fiftyone.operators.executor import ExecutionContext

from samseg_core.sharding import shard_views, sum_shard_summaries

PLUGIN = "@samseg/samseg"
#: Stage operators that process samples independently, so a shard is a valid unit of work. The QA stages are
#: not among them: their runs hold dataset-level totals, which one shard cannot compute (and they are quick).
SHARDABLE_STAGES = (
    "run_baseline",
    "semantic_voting",
    "refine_with_sam",
    "open_vocab_labels",
)
_OWN_PARAMS = ("stage", "num_shards", "delegation_target", "delegate")
# request keys that would make a queued shard target something other than its shard view
_SELECTION_KEYS = (
    "view",
    "params",
    "selected",
    "selected_labels",
    "current_sample",
    "extended_selection",
    "view_target",
    "delegated",
    "prompt_id",
)


def stage_uri(stage: str) -> str:
    """Returns the operator URI of a stage given by name (``run_baseline``) or URI (``@org/plugin/name``)."""
    return stage if stage.startswith("@") else f"{PLUGIN}/{stage}"


def queue_sharded(
    operator_uri: str,
    samples: Any,
    params: dict[str, Any],
    num_shards: int,
    *,
    request_params: dict[str, Any] | None = None,
    delegation_target: str | None = None,
) -> list[str]:
    """Queues ``num_shards`` delegated operations of ``operator_uri``, one per disjoint shard of ``samples``.

    Args:
        operator_uri: the stage operator, e.g. ``"@samseg/samseg/run_baseline"``.
        samples: the dataset or view to split.
        params: the stage operator's params (as its form or ``__call__`` would pass them).
        num_shards: how many operations to queue.
        request_params: the caller's request (inside an operator: ``ctx.request_params``), whose user and
            workspace keys the shards inherit; view and selection keys are replaced by the shard's view.
        delegation_target: the orchestrator to queue on (None: any local worker).

    Returns:
        the ids of the queued operations (strings), in shard order.
    """
    operator = foo.get_operator(stage_uri(operator_uri))
    if not operator.config.allow_delegated_execution:
        raise ValueError(f"{operator.uri} does not allow delegated execution; it cannot be sharded")
    base = {k: v for k, v in (request_params or {}).items() if k not in _SELECTION_KEYS}
    dataset_name = samples._root_dataset.name
    service = DelegatedOperationService()
    operation_ids = []
    for index, view in enumerate(shard_views(samples, num_shards)):
        shard_params = {**params, "skip_existing": True, "shard_index": index, "num_shards": num_shards}
        shard_params["delegate"] = True
        ctx = ExecutionContext(
            request_params={
                **base,
                "dataset_name": dataset_name,
                "view": view._serialize(),
                "view_target": ViewTarget.CURRENT_VIEW,
                "params": shard_params,
                "delegated": True,
            }
        )
        operation = service.queue_operation(
            operator=operator.uri,
            label=f"{operator.config.label} (shard {index + 1}/{num_shards})",
            delegation_target=delegation_target,
            context=ctx,
            metadata={"inputs_schema": None, "outputs_schema": None},
            rerunnable=operator.config.rerunnable,
        )
        operation_ids.append(str(operation.id))
    return operation_ids


def shard_results(operation_ids: Sequence[str]) -> dict[str, Any]:
    """Returns the run states of queued shard operations and, once all completed, their summed summaries.

    Keys: ``states`` (id -> run state), ``done`` (all completed or failed), ``total`` (summed
    ``processed``/``skipped``/``failed``/``errors`` of the completed shards), ``failures`` (id -> error).
    """
    from bson import ObjectId

    service = DelegatedOperationService()
    states, summaries, failures = {}, [], {}
    for op_id in operation_ids:
        doc = service.get(ObjectId(op_id))
        states[op_id] = str(doc.run_state)
        result = getattr(doc, "result", None)
        if result is not None and getattr(result, "error", None):
            failures[op_id] = result.error
        elif result is not None and isinstance(getattr(result, "result", None), dict):
            summaries.append(result.result)
    done = all(state in ("completed", "failed") for state in states.values())
    return {"states": states, "done": done, "total": sum_shard_summaries(summaries), "failures": failures}


def _stage_choices() -> list[str]:
    return [name for name in SHARDABLE_STAGES if foo.operator_exists(stage_uri(name))]


def _stage_form(ctx: Any, stage: str) -> types.Object | None:
    """Returns the chosen stage operator's own input form (shown inline below the shard settings)."""
    try:
        prop = foo.get_operator(stage_uri(stage)).resolve_input(ctx)
    except Exception:  # an unknown stage or a form that needs more context: the stage is validated on execute
        return None
    return getattr(prop, "type", None)


class ShardRun(foo.Operator):
    """Queues a samseg stage as N delegated operations over disjoint shards, for several workers."""

    @property
    def config(self) -> foo.OperatorConfig:
        return foo.OperatorConfig(
            name="shard_run",
            label="samseg: run a stage on N workers",
            description="Queue a stage as N delegated operations over disjoint shards of the view",
            dynamic=True,
            allow_immediate_execution=True,
            allow_delegated_execution=False,  # queueing is quick; the shards themselves are delegated
            icon="/assets/icon.svg",
        )

    def resolve_input(self, ctx: Any) -> types.Property:
        inputs = types.Object()
        choices = _stage_choices() or list(SHARDABLE_STAGES)
        dropdown = types.Dropdown(label="Stage")
        for choice in choices:
            dropdown.add_choice(choice, label=choice)
        inputs.enum("stage", dropdown.values(), default=choices[0], label="Stage", view=dropdown)
        inputs.int(
            "num_shards",
            label="Number of shards",
            default=4,
            required=True,
            description="One delegated operation per shard; run several `fiftyone delegated launch` workers",
        )
        inputs.str("delegation_target", label="Delegation target (optional)", default="", required=False)
        stage_form = _stage_form(ctx, ctx.params.get("stage") or choices[0])
        for name, prop in (getattr(stage_form, "properties", None) or {}).items():
            if name not in _OWN_PARAMS:
                inputs.add_property(name, prop)  # a Property: define_property would wrap it as a type
        return types.Property(inputs, view=types.View(label="samseg: run a stage on N workers"))

    def execute(self, ctx: Any) -> dict[str, Any]:
        params = dict(ctx.params)
        stage = params.get("stage") or SHARDABLE_STAGES[0]
        num_shards = int(params.get("num_shards") or 1)
        stage_params = {k: v for k, v in params.items() if k not in _OWN_PARAMS}
        operation_ids = queue_sharded(
            stage,
            ctx.target_view(),
            stage_params,
            num_shards,
            request_params=ctx.request_params,
            delegation_target=params.get("delegation_target") or None,
        )
        return {"stage": stage_uri(stage), "num_shards": num_shards, "operation_ids": operation_ids}

    def resolve_output(self, ctx: Any) -> types.Property:
        outputs = types.Object()
        outputs.str("stage", label="Stage")
        outputs.int("num_shards", label="Shards queued")
        outputs.list("operation_ids", types.String(), label="Delegated operation ids")
        return types.Property(outputs, view=types.View(label="samseg: shards queued"))

    def __call__(
        self,
        sample_collection: Any,
        stage: str,
        num_shards: int = 4,
        delegation_target: str | None = None,
        **stage_params: Any,
    ) -> dict[str, Any]:
        """Queues ``stage`` over ``num_shards`` disjoint shards of ``sample_collection`` from Python.

        Args:
            sample_collection: a dataset or view.
            stage: a samseg stage operator name (``run_baseline``, ``semantic_voting``, ...) or any operator URI.
            num_shards: how many delegated operations to queue.
            delegation_target: the orchestrator to queue on (None: any local worker).
            **stage_params: the stage operator's params (e.g. ``model=``, ``label_field=``, ``batch_size=``).

        Returns:
            ``{"stage", "num_shards", "operation_ids"}``; pass the ids to :func:`shard_results` to follow them.
        """
        params = {**stage_params, "stage": stage, "num_shards": num_shards}
        if delegation_target:
            params["delegation_target"] = delegation_target
        ctx = {"view": sample_collection.view(), "params": params}
        return foo.execute_operator(self.uri, ctx).result


OPERATORS = [ShardRun]
