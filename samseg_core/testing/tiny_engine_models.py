"""Tiny randomly initialised CLIP (open_clip), BLIP and CLIPSeg (transformers) with real tokenizers, offline.

The architectures are the real ones, only small; the tokenizers are built here from files this module writes
(BLIP: a BERT ``vocab.txt`` of common caption words; CLIPSeg: ``vocab.json`` + ``merges.txt`` derived from the
BPE file in open_clip's wheel, so its ids equal open_clip's). Random weights give arbitrary but deterministic
outputs: good for plumbing, batching and speed tests, never for quality claims.

Zero-argument ``tiny_*`` / ``*_dir`` functions are usable as ``"module:function"`` model specs by operators.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import pathlib
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import torch

CAPTION_WORDS = (
    "a an the of on in with and at near next to is are there some two three "
    "man woman person people child dog dogs cat cats horse horses bird car cars bus buses truck bicycle "
    "train boat plane street road beach grass tree trees sky water building buildings house table chair "
    "bed sofa laptop phone cup plate food pizza umbrella frisbee ball field snow mountain fence sign light "
    "traffic window door wall floor kitchen room red white black green blue small large "
    "riding playing sitting standing parked holding walking"
).split()
BERT_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "[ENC]")


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def _files_dir(directory: str | os.PathLike | None) -> Iterator[pathlib.Path]:
    """``directory``, or a temporary one removed afterwards (loaded tokenizers keep no file handles)."""
    if directory is not None:
        yield pathlib.Path(directory)
        return
    with tempfile.TemporaryDirectory(prefix="samseg-tiny-tokenizer-") as folder:
        yield pathlib.Path(folder)


def _default_dir(name: str) -> pathlib.Path:
    root = os.environ.get("SAMSEG_CACHE_DIR") or os.path.join(tempfile.gettempdir(), "samseg-cache")
    return pathlib.Path(root) / "tiny_engine_models" / name


def _saved_once(name: str, save: Callable[[pathlib.Path], Any], marker: str) -> str:
    """Saves a tiny model with ``save(directory)`` under ``$SAMSEG_CACHE_DIR`` unless ``marker`` is already
    there, and returns the directory (what the zero-argument ``tiny_*_dir`` spec targets return)."""
    directory = _default_dir(name)
    if not (directory / marker).exists():
        save(directory)
    return str(directory)


def _save_pair(directory: pathlib.Path, model: Any, processor: Any) -> pathlib.Path:
    """Writes a transformers model and its processor with ``save_pretrained`` into ``directory``."""
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


# ---------------------------------------------------------------- CLIP (open_clip)

TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"layers": 2, "width": 64, "head_width": 32, "patch_size": 16, "image_size": 64},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def tiny_open_clip(seed: int = 0) -> torch.nn.Module:
    """Returns an open_clip ``CLIP`` built from :data:`TINY_CLIP_CONFIG` (64 px input) with seeded weights."""
    from open_clip import CLIP

    with _seeded(seed):
        model = CLIP(**TINY_CLIP_CONFIG)
    return model.eval()


def tiny_clip(seed: int = 0):
    """Returns a :class:`~samseg_core.models.clip.ClipClassifier` over :func:`tiny_open_clip` (CPU)."""
    from samseg_core.models.clip import load_clip

    return load_clip(tiny_open_clip(seed), device="cpu")


def save_tiny_clip(directory: str | os.PathLike, seed: int = 0) -> pathlib.Path:
    """Writes ``open_clip_config.json`` + ``open_clip_pytorch_model.bin`` of the tiny CLIP (an open_clip
    ``local-dir:`` folder that :func:`~samseg_core.models.clip.load_clip` opens) and returns the directory."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "model_cfg": TINY_CLIP_CONFIG,
        "preprocess_cfg": {
            "mean": [0.48145466, 0.4578275, 0.40821073],
            "std": [0.26862954, 0.26130258, 0.27577711],
        },
    }
    (directory / "open_clip_config.json").write_text(json.dumps(config, indent=2))
    torch.save(tiny_open_clip(seed).state_dict(), directory / "open_clip_pytorch_model.bin")
    return directory


def tiny_clip_dir() -> str:
    """Saves the tiny CLIP under ``$SAMSEG_CACHE_DIR`` (once) and returns the directory (a spec target)."""
    return _saved_once("clip", save_tiny_clip, "open_clip_pytorch_model.bin")


# ---------------------------------------------------------------- BLIP captioner


def write_bert_vocab(directory: str | os.PathLike, words: tuple[str, ...] = CAPTION_WORDS) -> pathlib.Path:
    """Writes a BERT ``vocab.txt`` (special tokens, then ``words``) into ``directory`` and returns its path."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "vocab.txt"
    path.write_text("\n".join(dict.fromkeys([*BERT_SPECIAL_TOKENS, *words])) + "\n")
    return path


def tiny_blip_processor(directory: str | os.PathLike | None = None, *, image_size: int = 64):
    """Returns a ``BlipProcessor``: ``BlipImageProcessor`` at ``image_size`` + a BERT tokenizer as BLIP's
    (``[DEC]`` as BOS) whose vocabulary file is written into ``directory`` (default: a temporary directory)."""
    from transformers import BertTokenizer, BlipImageProcessor, BlipProcessor

    with _files_dir(directory) as folder:
        write_bert_vocab(folder)
        tokenizer = BertTokenizer.from_pretrained(
            str(folder), bos_token="[DEC]", additional_special_tokens=["[ENC]"]
        )
    image_processor = BlipImageProcessor(size={"height": image_size, "width": image_size})
    return BlipProcessor(image_processor=image_processor, tokenizer=tokenizer)


def tiny_blip_model(tokenizer, seed: int = 0, *, image_size: int = 64):
    """Returns a ``BlipForConditionalGeneration`` (2-layer 32-wide text and vision) sized to ``tokenizer``."""
    from transformers import BlipConfig, BlipForConditionalGeneration

    config = BlipConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "encoder_hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 64,
            "bos_token_id": tokenizer.bos_token_id,
            "sep_token_id": tokenizer.sep_token_id,
            "eos_token_id": tokenizer.sep_token_id,
            "pad_token_id": tokenizer.pad_token_id,
            # wider than the default init, so that random captions depend on the image
            "initializer_range": 0.2,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": image_size,
            "patch_size": 16,
            "initializer_range": 1.0,
        },
        projection_dim=32,
    )
    with _seeded(seed):
        model = BlipForConditionalGeneration(config)
    return model.eval()


def tiny_blip(seed: int = 0, directory: str | os.PathLike | None = None):
    """Returns ``(model, processor)``: a tiny BLIP captioner and its processor (vocab written to ``directory``)."""
    processor = tiny_blip_processor(directory)
    return tiny_blip_model(processor.tokenizer, seed), processor


def tiny_captioner(seed: int = 0):
    """Returns a :class:`~samseg_core.models.caption.Captioner` over :func:`tiny_blip` (CPU)."""
    from samseg_core.models.caption import load_captioner

    return load_captioner(tiny_blip(seed), device="cpu")


def save_tiny_blip(directory: str | os.PathLike, seed: int = 0) -> pathlib.Path:
    """Saves the tiny BLIP model and processor with ``save_pretrained`` into ``directory`` and returns it."""
    directory = pathlib.Path(directory)
    return _save_pair(directory, *tiny_blip(seed, directory / "vocab"))


def tiny_blip_dir() -> str:
    """Saves the tiny BLIP under ``$SAMSEG_CACHE_DIR`` (once) and returns the directory (a spec target)."""
    return _saved_once("blip", save_tiny_blip, "config.json")


# ---------------------------------------------------------------- CLIPSeg


def write_clip_bpe_files(directory: str | os.PathLike) -> pathlib.Path:
    """Writes ``vocab.json`` + ``merges.txt`` for transformers' ``CLIPTokenizer`` from open_clip's BPE file.

    The vocabulary is open_clip's ``SimpleTokenizer`` encoder with its start/end tokens renamed to
    ``<|startoftext|>`` / ``<|endoftext|>``, so token ids are identical to open_clip's.
    """
    from open_clip.tokenizer import SimpleTokenizer, default_bpe

    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    merges = gzip.open(default_bpe()).read().decode("utf-8").split("\n")
    merges = merges[1 : 49152 - 256 - 2 + 1]  # the slice SimpleTokenizer uses
    renames = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    vocab = {renames.get(token, token): index for token, index in SimpleTokenizer().encoder.items()}
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return directory


def tiny_clip_tokenizer(directory: str | os.PathLike | None = None):
    """Returns a transformers ``CLIPTokenizer`` loaded from BPE files written into ``directory``."""
    from transformers import CLIPTokenizer

    with _files_dir(directory) as folder:
        write_clip_bpe_files(folder)
        return CLIPTokenizer.from_pretrained(str(folder))


def tiny_clipseg_processor(directory: str | os.PathLike | None = None, *, image_size: int = 64):
    """Returns a ``CLIPSegProcessor`` (``ViTImageProcessor`` at ``image_size`` + :func:`tiny_clip_tokenizer`)."""
    from transformers import CLIPSegProcessor, ViTImageProcessor

    image_processor = ViTImageProcessor(
        size={"height": image_size, "width": image_size},
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    )
    return CLIPSegProcessor(image_processor=image_processor, tokenizer=tiny_clip_tokenizer(directory))


def tiny_clipseg_model(seed: int = 0, *, image_size: int = 64):
    """Returns a ``CLIPSegForImageSegmentation`` (3-layer 32-wide towers, 16-wide decoder), seeded."""
    from transformers import CLIPSegConfig, CLIPSegForImageSegmentation

    config = CLIPSegConfig(
        text_config={
            "vocab_size": 49408,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 77,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 3,
            "num_attention_heads": 2,
            "image_size": image_size,
            "patch_size": 16,
        },
        projection_dim=32,
        reduce_dim=16,
        extract_layers=[1, 2],
        decoder_num_attention_heads=2,
        decoder_intermediate_size=32,
    )
    with _seeded(seed):
        model = CLIPSegForImageSegmentation(config)
    return model.eval()


def tiny_clipseg(seed: int = 0, directory: str | os.PathLike | None = None):
    """Returns ``(model, processor)``: a tiny CLIPSeg and its processor."""
    return tiny_clipseg_model(seed), tiny_clipseg_processor(directory)


def tiny_clipseg_scorer(seed: int = 0):
    """Returns a :class:`~samseg_core.models.clipseg.ClipSegScorer` over :func:`tiny_clipseg` (CPU)."""
    from samseg_core.models.clipseg import load_clipseg

    return load_clipseg(tiny_clipseg(seed), device="cpu")


def save_tiny_clipseg(directory: str | os.PathLike, seed: int = 0) -> pathlib.Path:
    """Saves the tiny CLIPSeg model and processor with ``save_pretrained`` into ``directory`` and returns it."""
    directory = pathlib.Path(directory)
    return _save_pair(directory, *tiny_clipseg(seed, directory / "bpe"))


def tiny_clipseg_dir() -> str:
    """Saves the tiny CLIPSeg under ``$SAMSEG_CACHE_DIR`` (once) and returns the directory (a spec target)."""
    return _saved_once("clipseg", save_tiny_clipseg, "config.json")
