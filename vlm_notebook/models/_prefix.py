"""Encode the prompt prefix that ends with the image once; continue generation from a copy of it.

A chat prompt with one picture reads ``before + <image placeholder> + after``. The processor
expands the placeholder into the image's tokens, which always end on a special token, so the
ids of the whole prompt are the ids of ``before + placeholder`` (the *prefix*) followed by the
ids of ``after`` tokenized on its own. The prefix goes through the model once (vision encoder
and language model); its KV cache is kept, and every question about the same picture only
prefills the ids of its own ``after``. The first question can also go through with the prefix in
one pass whose attention is split at the prefix (``encode_prefix(..., suffix_ids)``): the same
numbers, one pass less.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from ..cache import PrefixEntry
from ..runtime import Runtime
from .attention import keeping_prefix

_TEXT_KEYS = ("input_ids", "attention_mask")


@dataclass(frozen=True)
class SplitPrompt:
    """A chat prompt cut at its one image placeholder."""

    before: str
    after: str


def split_prompt(text: str, placeholder: str) -> SplitPrompt | None:
    """``text`` cut at ``placeholder``; None unless the placeholder occurs exactly once."""
    parts = text.split(placeholder)
    if len(parts) != 2:
        return None
    return SplitPrompt(parts[0], parts[1])


@dataclass(frozen=True)
class WholePrompt:
    """A whole prompt's pass on a cache miss: its KV cache and the next token's logits (1 x vocabulary)."""

    cache: Any
    logits: torch.Tensor


def encode_prefix(
    model: Any,
    processor: Any,
    picture: Image.Image,
    prefix_text: str,
    processor_kwargs: dict[str, Any],
    runtime: Runtime,
    suffix_ids: torch.Tensor | None = None,
) -> tuple[PrefixEntry, WholePrompt | None]:
    """Run the prefix (chat opening and image) through ``model``; return its ids and KV cache.

    ``prefix_text`` ends with the image placeholder. Times the vision encoder apart from the rest.
    With ``suffix_ids`` (the question's words, 1 x n), the whole prompt goes through in one pass,
    its attention split at the prefix (:func:`attention.keeping_prefix`), so that the prefix's KV
    cache and the next token's logits are those of two passes; also returns that pass.
    """
    inputs = runtime.place(processor(text=prefix_text, images=[picture], return_tensors="pt", **processor_kwargs))
    ids = inputs["input_ids"]
    per_token = {key: value for key, value in inputs.items() if _is_token_input(key, value, ids)}
    per_image = {
        key: value for key, value in inputs.items()
        if key not in _TEXT_KEYS and key not in per_token and not key.startswith("pixel_")
    }
    entry = PrefixEntry(
        input_ids=ids,
        kv_cache=None,
        token_inputs=per_token,
        image_inputs=per_image,
        image_tokens=int((ids == processor.tokenizer.convert_tokens_to_ids(processor.image_token)).sum()),
        tiles=_tiles(inputs.get("pixel_values")),
    )
    started = time.perf_counter()
    whole = None
    with _timed(vision_module(model)) as vision:
        if suffix_ids is None:
            entry.kv_cache = without_head(model)(**inputs, use_cache=True).cache
        else:
            with keeping_prefix(ids.shape[1]):
                output = model(**{**inputs, **continuation_inputs(entry, suffix_ids)}, use_cache=True, logits_to_keep=1)
            whole = WholePrompt(output.cache, output.logits[:, -1])
            entry.kv_cache = copy.deepcopy(output.cache)
            entry.kv_cache.crop(-suffix_ids.shape[1])
    entry.vision_seconds = vision[0]
    entry.prefill_seconds = max(time.perf_counter() - started - vision[0], 0.0)
    return entry, whole


def continuation_inputs(entry: PrefixEntry, suffix_ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """The whole prompt's model inputs without the pixels: prefix ids and ``suffix_ids`` (1 x n)."""
    ids = torch.cat([entry.input_ids, suffix_ids], dim=1)
    inputs: dict[str, torch.Tensor] = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    for key, value in entry.token_inputs.items():  # the question's words are text: type 0
        inputs[key] = torch.cat([value, value.new_zeros((1, suffix_ids.shape[1]))], dim=1)
    inputs.update(entry.image_inputs)
    return inputs


def without_head(model: Any) -> Any:
    """``model`` without its language-model head where transformers splits it off (``model.model``,
    which returns the hidden states and the KV cache): the prefix's logits are never read, and the
    head is the largest single matrix of a small model (Qwen2-VL-2B's: 151,936 x 1,536 weights,
    about 0.47 GB to read in bf16)."""
    inner = getattr(model, "model", None)
    return inner if isinstance(inner, torch.nn.Module) and hasattr(model, "lm_head") else model


def vision_module(model: Any) -> torch.nn.Module | None:
    """The vision encoder of a transformers image-text model (Idefics3, SmolVLM, Qwen2-VL)."""
    inner = getattr(model, "model", model)
    for name in ("vision_model", "visual", "vision_tower"):
        module = getattr(inner, name, None)
        if isinstance(module, torch.nn.Module):
            return module
    return None


def _is_token_input(key: str, value: Any, ids: torch.Tensor) -> bool:
    return (
        key not in _TEXT_KEYS and not key.startswith("pixel_")
        and isinstance(value, torch.Tensor) and value.shape == ids.shape
    )


def _tiles(pixel_values: Any) -> int | None:
    """Tiles of a tiling family (pixels shaped batch x tiles x channels x height x width)."""
    if isinstance(pixel_values, torch.Tensor) and pixel_values.dim() == 5:
        return int(pixel_values.shape[1])
    return None


@contextmanager
def _timed(module: torch.nn.Module | None) -> Iterator[list[float]]:
    """Seconds spent inside ``module``'s forward while the block runs (in a one-item list)."""
    spent = [0.0]
    if module is None:
        yield spent
        return
    started: list[float] = []

    def enter(*_: Any) -> None:
        started.append(time.perf_counter())

    def leave(*_: Any) -> None:
        if started:
            spent[0] += time.perf_counter() - started.pop()

    handles = [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]
    try:
        yield spent
    finally:
        for handle in handles:
            handle.remove()
