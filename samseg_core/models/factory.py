"""Model specs of the form ``"package.module:function"``: build a model object by calling a factory.

Operators and delegated workers only receive strings; this lets a user (or a test) name any model object that
code can build — a fine-tuned checkpoint with custom loading, or ``samseg_core.testing:tiny_sam`` — without
a hub id. Hub ids (``org/name``) and filesystem paths never match the pattern.
"""

from __future__ import annotations

import importlib
import re
from typing import Any

_SPEC = re.compile(r"^(?P<module>[A-Za-z_][\w]*(?:\.[A-Za-z_][\w]*)*):(?P<attr>[A-Za-z_][\w]*)$")


def is_factory_spec(value: Any) -> bool:
    """Returns whether ``value`` is a ``"module:function"`` string."""
    return isinstance(value, str) and bool(_SPEC.match(value))


def build_from_spec(spec: str, **kwargs: Any) -> Any:
    """Imports ``module`` and returns ``module.function(**kwargs)``; a clear ValueError when that fails."""
    match = _SPEC.match(spec)
    if not match:
        raise ValueError(f"'{spec}' is not a 'package.module:function' model spec")
    try:
        module = importlib.import_module(match["module"])
        factory = getattr(module, match["attr"])
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot import model factory '{spec}': {err}") from err
    return factory(**kwargs)
