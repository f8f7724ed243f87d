"""Loading a transformers model together with its processor from a hub id, a local directory or built objects."""

from __future__ import annotations

import os
from typing import Any


def load_model_and_processor(
    model: Any, processor: Any, *, model_class: Any, processor_class: Any, what: str
) -> tuple[Any, Any]:
    """Returns ``(model, processor)`` built from whatever the caller passed.

    Args:
        model: a hub id or local directory (``save_pretrained`` output), a built model, or ``(model, processor)``.
        processor: a processor, a hub id / directory to load one from, or None (taken from ``model``'s id/dir).
        model_class: the transformers class whose ``from_pretrained`` loads the model.
        processor_class: the transformers class whose ``from_pretrained`` loads the processor.
        what: a name for error messages ("BLIP captioner", "CLIPSeg").
    """
    if isinstance(model, tuple):
        model, processor = model
    if isinstance(model, (str, os.PathLike)):
        name = os.fspath(model)
        try:
            model = model_class.from_pretrained(name)
        except OSError as err:
            raise OSError(
                f"cannot load {what} '{name}': {err}. Without internet, pass a local directory saved with "
                "save_pretrained (model and processor)"
            ) from err
        processor = processor or name
    if isinstance(processor, (str, os.PathLike)):
        processor = processor_class.from_pretrained(os.fspath(processor))
    if processor is None:
        raise ValueError(f"a built {what} model needs its processor (processor=...)")
    return model, processor
