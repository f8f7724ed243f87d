"""The run options every stage shares, named as FiftyOne's ``apply_model`` names them, declared once.

Each stage may declare its own ``batch_size`` default (a model stage holds images and masks per batch, a QA
stage only label maps); every other default is the same everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from samseg_core.stages.options import OptionSpec, StageParameterError, option, option_specs

RUN_OPTION_NAMES = (
    "batch_size",
    "num_workers",
    "device",
    "skip_existing",
    "skip_failures",
    "overwrite",
    "progress",
)


@dataclass(frozen=True)
class RunOptions:
    """How a stage runs: batching, workers, device, resume / failure / overwrite policy, progress."""

    batch_size: int = option(4, "Samples per batch (and per bulk write)", ge=1, le=4096)
    num_workers: int = option(
        0, "Image-decoding worker processes (0: a background thread; delegated runs only)", ge=0, le=64
    )
    device: str | None = option(
        None, "cuda, cuda:1 or cpu; empty: CUDA when available (bf16 autocast there)", label="Device"
    )
    skip_existing: bool = option(
        False, "Resume: process only samples without results (excludes overwrite)", label="Resume"
    )
    skip_failures: bool = option(
        True, "Record a failing sample's error in <field>_error and go on", label="Skip failures"
    )
    overwrite: bool = option(
        False, "Replace existing values, mask-target entries, runs and files (excludes resume)"
    )
    progress: Any = option(
        None, "True to print progress, or a callable taking the fraction done", python_only=True
    )


def run_option_specs(batch_size: int) -> tuple[OptionSpec, ...]:
    """The run options' declarations with a stage's ``batch_size`` default."""
    specs = []
    for spec in option_specs(RunOptions):
        if spec.name == "batch_size":
            spec = OptionSpec(spec.name, spec.annotation, batch_size, spec.info)
        specs.append(spec)
    return tuple(specs)


def check_run_options(run: RunOptions) -> None:
    """Raises :class:`StageParameterError` for combinations no single option can see."""
    if run.skip_existing and run.overwrite:
        raise StageParameterError(
            "overwrite",
            "skip_existing=True and overwrite=True exclude each other",
            "pass skip_existing=True to resume without replacing, or overwrite=True to replace everything",
        )
