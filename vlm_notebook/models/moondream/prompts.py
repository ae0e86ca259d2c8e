"""Moondream's prompts as token ids: the one place that lays out each template, for inference and training.

Follows ``moondream/torch/moondream.py`` of github.com/vikhyat/moondream (facts only). A prompt
comes after BOS and the image tokens: a caption is its template alone; a query is the template's
prefix, the question, the suffix and, in non-reasoning mode, the answer token once more (the
suffix is the answer token, so the prompt ends with it twice); ``detect`` and ``point`` put the
object's name, after a space, between their prefix and suffix.
"""

from __future__ import annotations

from collections.abc import Callable

from .config import TokenizerConfig

#: Text -> token ids (the model's tokenizer, without special tokens).
Encode = Callable[[str], list[int]]

LOCATE_KINDS: tuple[str, ...] = ("detect", "point")


def caption_prompt(tokens: TokenizerConfig, length: str) -> list[int]:
    """The caption template of ``length`` (short, normal or long)."""
    prefix, suffix = tokens.template(f"caption_{length}")
    return prefix + suffix


def query_prompt(tokens: TokenizerConfig, encode: Encode, question: str) -> list[int]:
    """Prefix, the (already cleaned) question, suffix, then the answer token again."""
    prefix, suffix = tokens.template("query")
    return prefix + encode(question) + suffix + [tokens.answer_id]


def locate_prompt(tokens: TokenizerConfig, encode: Encode, kind: str, name: str) -> list[int]:
    """``detect`` or ``point`` prompt for the (already cleaned) object ``name``."""
    if kind not in LOCATE_KINDS:
        raise ValueError(f"unknown locate kind {kind!r}; known: {', '.join(LOCATE_KINDS)}")
    prefix, suffix = tokens.template(kind)
    return prefix + encode(" " + name) + suffix
