"""Validate, then write: every field role of a stage is checked before anything is written.

:func:`plan_stage` checks a stage's parameters against the collection — input fields exist and hold the
declared label type, outputs are distinct from each other and from the inputs, every output role (primary and
secondary fields, the error field, the run, mask files) is checked against ``skip_existing`` / ``overwrite``,
the device exists, the view is not empty — and returns a :class:`StagePlan`. It writes nothing: a bad parameter
raises one :class:`~samseg_core.errors.StageParameterError` naming it and the remedy, and the dataset is as it
was. :meth:`StagePlan.prepare` then makes the first writes (the run, typed output fields with samseg's
ownership record, mask-target entries, mask directories) and the runner writes the values.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from samseg_core.errors import EmptyViewError, FieldExistsError, StageParameterError
from samseg_core.label_types import DETECTIONS, FLOAT, HEATMAP, INT, SEGMENTATION, STRING
from samseg_core.mask_files import (
    claim_directory,
    existing_mask_files,
    field_mask_dir,
    mask_file,
    owns_directory,
    write_png,
)
from samseg_core.mask_targets import check_mask_targets, set_mask_targets
from samseg_core.models.device import check_device
from samseg_core.schema import (
    RESERVED_FIELDS,
    declare_field,
    field_owner,
    field_type_name,
    hide_in_app_by_default,
    holds,
)
from samseg_core.stages.options import INPUT, INPUT_RUN, OutputField, option_specs, role_values
from samseg_core.stages.run_options import RunOptions
from samseg_core.stages.stale_runs import clear_stale, mark_stale, runs_reading


@dataclass(frozen=True)
class RunRecord:
    """A FiftyOne run a stage registers under ``key`` (its ``kind`` and JSON-serialisable ``config``)."""

    key: str
    kind: str
    config: Mapping[str, Any]
    param: str = "eval_key"


#: The stage whose Detections output, even the first, is a failure layer (hidden by default in the App).
FAILURES_STAGE = "detect_failures"


def error_field_for(label_field: str) -> str:
    """The per-sample error field of a stage whose primary output is ``label_field``."""
    return f"{label_field}_error"


@dataclass
class StagePlan:
    """What a validated stage run will read and write; :meth:`prepare` makes the first writes."""

    stage: str
    samples: Any
    run: RunOptions
    inputs: list[str]
    outputs: list[OutputField]
    sample_ids: list[str]
    skip_ids: set[str]
    owner: str
    mask_dir: str | None = None
    run_record: RunRecord | None = None
    replace_run: bool = False
    mask_targets: dict[str, dict[int, str]] = field(default_factory=dict)
    prepared: bool = False
    stale_runs: list[str] = field(default_factory=list)

    @property
    def dataset(self) -> Any:
        """The dataset the samples belong to."""
        return self.samples._dataset

    @property
    def primary(self) -> str:
        """The primary output field (the one ``skip_existing`` looks at; written last in each batch)."""
        return self.outputs[0].name

    @property
    def error_field(self) -> str:
        """The per-sample error field."""
        return error_field_for(self.primary)

    @property
    def todo_ids(self) -> list[str]:
        """The sample ids to process, in collection order."""
        return [sid for sid in self.sample_ids if sid not in self.skip_ids]

    def add_mask_targets(
        self, field_name: str, targets: Mapping[int, str], *, param: str = "label_field"
    ) -> None:
        """Checks ``targets`` against ``mask_targets[field_name]`` now (raises on a conflict) and merges them
        in :meth:`prepare`; existing entries are never dropped."""
        if self.prepared:
            raise RuntimeError("mask targets must be planned before prepare()")
        changes = check_mask_targets(
            self.dataset, field_name, targets, overwrite=self.run.overwrite, param=param
        )
        self.mask_targets.setdefault(field_name, {}).update(changes)

    def segmentation(self, field_name: str, mask: Any, sample_id: str) -> Any:
        """An ``fo.Segmentation`` of an HxW class map for ``field_name``: in the database, or as
        ``<mask_dir>/<field>/<sample id>.png`` when the run has a ``mask_dir``."""
        import fiftyone as fo

        from samseg_core.labels import compact_class_map

        compact = compact_class_map(mask)
        if self.mask_dir is None:
            return fo.Segmentation(mask=compact)
        return fo.Segmentation(mask_path=write_png(mask_file(self.mask_dir, field_name, sample_id), compact))

    def layers_hidden_by_default(self) -> list[str]:
        """Per-mask and failure layers (secondary Detections / Heatmap outputs, a failure run's objects) that the
        App should not show until a user ticks them."""
        return [
            out.name
            for out in self.outputs
            if out.label_type in (DETECTIONS, HEATMAP)
            and (out is not self.outputs[0] or self.stage == FAILURES_STAGE)
        ]

    def stale_readers(self) -> dict[str, list[str]]:
        """``{output field: keys of the other samseg runs computed from it}`` for the existing fields this run
        writes: the runs it makes stale."""
        own = self.run_record.key if self.run_record is not None else None
        readers = {}
        for out in self.outputs:
            if self.dataset.get_field(out.name) is None:
                continue
            keys = [key for key in runs_reading(self.dataset, out.name) if key != own]
            if keys:
                readers[out.name] = keys
        return readers

    def mark_readers_stale(self) -> list[str]:
        """Marks stale (and warns about) the other runs computed from an existing field this run writes."""
        stale: list[str] = []
        for field_name, keys in self.stale_readers().items():
            stale += mark_stale(self.dataset, keys, field_name, self.stage)
        return stale

    def declare_error_field(self) -> None:
        """Creates the error field (string, samseg's ownership record) if it does not exist yet."""
        declare_field(self.dataset, self.error_field, STRING, stage=self.stage, owner=self.owner)

    def prepare(self) -> None:
        """The first writes, after every check passed: replace or register the run, declare the output and
        error fields with their types and samseg's ownership record, merge mask targets key by key, claim the
        mask directories. The error field is created with the first error."""
        if self.prepared:
            return
        dataset = self.dataset
        self.stale_runs = self.mark_readers_stale()
        if self.run_record is not None:
            _register_run(self.samples, self.run_record, replace=self.replace_run)
            clear_stale(dataset, self.run_record.key)
        for out in self.outputs:
            declare_field(dataset, out.name, out.label_type, stage=self.stage, owner=self.owner)
            if out.label_type in (FLOAT, INT):  # per-sample QA numbers: indexed, so the grid can sort by them
                dataset.create_index(out.name)
        hide_in_app_by_default(dataset, self.layers_hidden_by_default())
        for field_name, entries in self.mask_targets.items():
            set_mask_targets(dataset, field_name, entries)
        if self.mask_dir is not None:
            for out in self.outputs:
                if out.label_type == SEGMENTATION:
                    claim_directory(
                        field_mask_dir(self.mask_dir, out.name), str(dataset._doc.id), out.name, self.stage
                    )
        self.prepared = True


# ------------------------------------------------------------------------------------------------ planning


def plan_stage(
    stage: str, samples: Any, options: Any, run: RunOptions, *, outputs: Sequence[OutputField] | None = None
) -> StagePlan:
    """Checks every parameter of a stage against ``samples`` and returns its plan; writes nothing.

    Args:
        stage: the stage's name.
        samples: the dataset or view.
        options: the stage's options dataclass.
        run: the run options.
        outputs: the fields the stage writes, primary first (default: its ``output_fields()``).
    """
    _check_collection(samples)
    check_device(run.device)
    inputs = _check_inputs(samples, options)
    _check_input_runs(samples, options)
    outputs = list(outputs if outputs is not None else options.output_fields())
    if not outputs:
        raise ValueError(f"stage {stage} declares no output field")
    run_record = options.run_record() if hasattr(options, "run_record") else None
    owner = run_record.key if run_record is not None else outputs[0].name
    _check_output_names(samples, outputs, inputs)
    sample_ids = list(samples.values("id"))
    replace_run = _check_run(samples, run_record, run)
    skip_ids = _check_output_values(samples, stage, owner, outputs, sample_ids, run, run_record)
    mask_dir = getattr(options, "mask_dir", None)
    plan = StagePlan(
        stage=stage,
        samples=samples,
        run=run,
        inputs=[name for names in inputs.values() for name in names],
        outputs=outputs,
        sample_ids=sample_ids,
        skip_ids=skip_ids,
        owner=owner,
        mask_dir=os.fspath(mask_dir) if mask_dir else None,
        run_record=run_record,
        replace_run=replace_run,
    )
    _check_mask_files(plan)
    check = getattr(options, "check", None)
    if check is not None:
        check(samples)
    return plan


def check_inputs(samples: Any, options: Any, run: RunOptions) -> None:
    """The checks of :func:`plan_stage` for a stage that plans its own writes (tags, saved views): the
    collection, the device, the input fields and runs, and the stage's own ``check``."""
    _check_collection(samples)
    check_device(run.device)
    _check_inputs(samples, options)
    _check_input_runs(samples, options)
    check = getattr(options, "check", None)
    if check is not None:
        check(samples)


def _check_collection(samples: Any) -> None:
    if not hasattr(samples, "_dataset") or not hasattr(samples, "values"):
        raise StageParameterError(
            "samples",
            f"expected a FiftyOne dataset or view, got {type(samples).__name__}",
            "pass a dataset or view",
        )
    if len(samples) == 0:
        raise EmptyViewError("samples", "the collection holds no samples", "pass a view with samples in it")


def _check_inputs(samples: Any, options: Any) -> dict[str, tuple[str, ...]]:
    """Every input field exists on the collection and holds its declared label type; inputs are distinct."""
    specs = {spec.name: spec for spec in option_specs(type(options))}
    inputs = role_values(options, INPUT)
    seen: dict[str, str] = {}
    for param, names in inputs.items():
        label_type = specs[param].info.label_type
        for name in names:
            if name in seen:
                raise StageParameterError(
                    param,
                    f"'{name}' is also {seen[name]}",
                    "an input field cannot be used twice: choose another",
                )
            seen[name] = param
            _check_input_field(samples, param, name, label_type)
    return inputs


def _check_input_field(samples: Any, param: str, name: str, label_type: str) -> None:
    from samseg_core.schema import fields_holding

    schema_field = samples.get_field(name)
    candidates = fields_holding(samples, label_type)
    hint = (
        f"{label_type} fields here: {candidates}"
        if candidates
        else f"this collection has no {label_type} field"
    )
    if schema_field is None:
        raise StageParameterError(param, f"no field '{name}' on this collection", hint)
    if not holds(schema_field, label_type):
        raise StageParameterError(
            param, f"'{name}' holds {field_type_name(schema_field)}, not {label_type}", hint
        )


def _check_input_runs(samples: Any, options: Any) -> None:
    from samseg_core.stages.eval_runs import run_kind

    specs = {spec.name: spec for spec in option_specs(type(options))}
    for param, (key,) in role_values(options, INPUT_RUN).items():
        kinds = specs[param].info.run_kinds
        kind = run_kind(samples, key)
        if kind is None:
            raise StageParameterError(
                param, f"no samseg run '{key}' on this dataset", _runs_hint(samples, kinds)
            )
        if kind not in kinds:
            raise StageParameterError(
                param, f"run '{key}' is a '{kind}' run, not {' or '.join(kinds)}", _runs_hint(samples, kinds)
            )


def _runs_hint(samples: Any, kinds: Iterable[str]) -> str:
    from samseg_core.stages.eval_runs import list_samseg_runs

    keys = [key for kind in kinds for key in list_samseg_runs(samples, kind)]
    return (
        f"runs of that kind here: {keys}"
        if keys
        else f"run a stage that stores a {'/'.join(kinds)} run first"
    )


def _check_output_names(
    samples: Any, outputs: Sequence[OutputField], inputs: Mapping[str, tuple[str, ...]]
) -> None:
    """Outputs are distinct from each other, from the error field and from the inputs, and not FiftyOne's own."""
    used = {name: f"the input {param}" for param, names in inputs.items() for name in names}
    error_field = error_field_for(outputs[0].name)
    for out in outputs:
        if out.name in RESERVED_FIELDS:
            raise StageParameterError(
                out.param, f"'{out.name}' is a field FiftyOne manages", "choose another name"
            )
        if out.name in used:
            raise StageParameterError(
                out.param, f"'{out.name}' is also {used[out.name]}", "write the output to a field of its own"
            )
        if out.name == error_field:
            raise StageParameterError(
                out.param, f"'{out.name}' is the run's error field", "choose another name"
            )
        used[out.name] = f"the output {out.param}"
    dataset = samples._dataset
    for out in outputs:
        existing = dataset.get_field(out.name)
        if existing is not None and not holds(existing, out.label_type):
            raise StageParameterError(
                out.param,
                f"'{out.name}' already holds {field_type_name(existing)}; this stage writes {out.label_type}",
                "choose another field name",
            )


def _ids_with_values(dataset: Any, name: str) -> set[str]:
    if dataset.get_field(name) is None:
        return set()
    return set(dataset.exists(name).values("id"))


def _check_output_values(
    samples: Any,
    stage: str,
    owner: str,
    outputs: Sequence[OutputField],
    sample_ids: Sequence[str],
    run: RunOptions,
    run_record: RunRecord | None,
) -> set[str]:
    """Returns the ids ``skip_existing`` skips; raises when a write would replace values without permission.

    A field is samseg's own when its ownership record names this stage and owner (the primary field or run
    key). Without ``overwrite``: any value in an output field on a sample to process is refused, except in
    samseg's own fields under ``skip_existing`` (leftovers of the interrupted run it resumes) and in samseg's
    own error field (bookkeeping of the previous run).
    """
    dataset = samples._dataset
    targets = set(sample_ids)
    if run.overwrite:
        return set()
    skip = _ids_with_values(dataset, outputs[0].name) & targets if run.skip_existing else set()
    todo = targets - skip
    checked = [*outputs, OutputField(error_field_for(outputs[0].name), STRING, "label_field")]
    for out in checked:
        record = field_owner(dataset, out.name)
        ours = record is not None and record.get("stage") == stage and record.get("owner") == owner
        is_error_field = out is checked[-1]
        if ours and (run.skip_existing or is_error_field):
            continue
        if run.skip_existing and out is outputs[0] and not ours and skip:
            raise FieldExistsError(
                out.param,
                f"'{out.name}' holds values samseg did not write on {len(skip)} samples; resuming into it would "
                "mix them with new results",
                "choose another field name, or pass overwrite=True to replace them",
            )
        held = _ids_with_values(dataset, out.name) & todo
        if held:
            raise FieldExistsError(
                out.param,
                f"'{out.name}' already holds values on {len(held)} of the samples",
                _remedy(ours, run),
            )
    return skip


def _remedy(ours: bool, run: RunOptions) -> str:
    if ours:
        return "pass skip_existing=True to resume, overwrite=True to replace them, or choose another name"
    return "they were not written by this samseg run: choose another name, or pass overwrite=True to replace them"


def _check_run(samples: Any, record: RunRecord | None, run: RunOptions) -> bool:
    """Returns whether an existing run of the same key is to be replaced; raises when it may not be."""
    if record is None:
        return False
    from samseg_core.stages.eval_runs import run_config, run_kind

    kind = run_kind(samples, record.key)
    if kind is None:
        if record.key in samples._dataset.list_runs():
            if run.overwrite:
                return True  # replaced: the user asked for it
            raise FieldExistsError(
                record.param,
                f"'{record.key}' is a run samseg did not create",
                "choose another key, or pass overwrite=True to replace it",
            )
        return False
    if kind != record.kind:
        raise StageParameterError(
            record.param,
            f"'{record.key}' is a samseg '{kind}' run, not '{record.kind}'",
            "choose another key",
        )
    if run.overwrite:
        return True
    if not run.skip_existing:
        raise FieldExistsError(
            record.param,
            f"run '{record.key}' already exists",
            "pass overwrite=True to replace it, skip_existing=True to resume it, or choose another key",
        )
    stored = run_config(samples, record.key)
    differing = sorted(k for k, v in record.config.items() if _plain(stored.get(k)) != _plain(v))
    if differing:
        raise FieldExistsError(
            record.param,
            f"run '{record.key}' was made with other settings ({', '.join(differing)}); it cannot be resumed",
            "pass overwrite=True to replace it, or choose another key",
        )
    return False


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def _check_mask_files(plan: StagePlan) -> None:
    """PNG files at the paths the run will write belong to this run (its marker), unless ``overwrite``."""
    if plan.mask_dir is None or plan.run.overwrite:
        return
    dataset_id = str(plan.dataset._doc.id)
    todo = plan.todo_ids
    for out in plan.outputs:
        if out.label_type != SEGMENTATION:
            continue
        directory = field_mask_dir(plan.mask_dir, out.name)
        if owns_directory(directory, dataset_id, out.name):
            continue
        clobbered = existing_mask_files(directory, todo)
        if clobbered:
            raise FieldExistsError(
                "mask_dir",
                f"{len(clobbered)} mask files already exist in {directory} and were not written by samseg for "
                f"'{out.name}' of this dataset",
                "choose another mask_dir, or pass overwrite=True to replace them",
            )


def _register_run(samples: Any, record: RunRecord, *, replace: bool) -> None:
    from samseg_core.stages.eval_runs import register_samseg_run

    register_samseg_run(samples, record.key, record.kind, replace=replace, **dict(record.config))
