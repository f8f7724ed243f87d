"""samseg FiftyOne plugin: SAM for semantic segmentation and dataset QA.

FiftyOne imports this file as a package when the repo is placed (or symlinked) in ``FIFTYONE_PLUGINS_DIR``.
``samseg_core`` lives beside it; when it is not installed as a package, the plugin directory is put on
``sys.path`` so the operators can import it.
"""

import importlib.util
import os
import sys

_PLUGIN_DIR = os.path.dirname(os.path.abspath(__file__))
if importlib.util.find_spec("samseg_core") is None:
    sys.path.insert(0, _PLUGIN_DIR)


def register(p):
    """Registers every samseg operator and panel with FiftyOne."""
    # imported here, not at module level: FiftyOne loads this file as a package, but test collectors may import
    # it as a plain module (the checkout's directory name need not be a valid package name)
    from .operators import all_operators, all_panels

    for operator in all_operators():
        p.register(operator)
    for panel in all_panels():
        p.register(panel)
