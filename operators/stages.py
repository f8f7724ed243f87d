"""The stage operators: one per registered stage, generated from its declaration (see ``stage_operator``)."""

from __future__ import annotations

from samseg_core.stages.registry import get_stage, stage_specs

from .stage_operator import operator_for

OPERATORS = [operator_for(*get_stage(spec.name)) for spec in stage_specs()]
