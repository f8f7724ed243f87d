"""samseg's FiftyOne operators and panels: thin adapters over ``samseg_core``.

Each module here defines ``OPERATORS`` (and optionally ``PANELS``); this package collects them, so adding a
workflow means adding one module (and its names in ``fiftyone.yml``).
"""

from __future__ import annotations

import importlib
import pkgutil


def _collect(attr: str) -> list[type]:
    found: list[type] = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_") or info.name in ("forms", "stage_operator"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        found.extend(getattr(module, attr, []))
    return found


def all_operators() -> list[type]:
    """Returns every operator class defined in this package."""
    return _collect("OPERATORS")


def all_panels() -> list[type]:
    """Returns every panel class defined in this package."""
    return _collect("PANELS")
