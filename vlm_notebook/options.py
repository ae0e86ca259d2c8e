"""How to generate: length and sampling settings, checked before any work starts."""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from .errors import RequestError

DEFAULT_MAX_NEW_TOKENS = 256
#: Temperatures below this decode greedily. Their sample is the most likely token anyway, and
#: dividing logits by them overflows float32 to inf, which makes sampling fail (vLLM does the same).
MIN_SAMPLING_TEMPERATURE = 1e-5
#: torch's generators take 64-bit seeds; any whole number is reduced modulo this (see ``generator_seed``).
SEED_MODULUS = 2**64


@dataclass(frozen=True)
class GenerationOptions:
    """Greedy decoding unless ``temperature`` > 0; ``seed`` makes sampling repeatable.

    A temperature under ``MIN_SAMPLING_TEMPERATURE`` (1e-5) decodes greedily. ``seed`` may be any
    whole number (``uuid.uuid4().int`` too): local models seed with it modulo 2**64, as torch does
    with negative seeds, so seeds that differ by a multiple of 2**64 give the same sample.
    """

    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int):
            raise RequestError(f"max_new_tokens must be a whole number, got {self.max_new_tokens!r}.")
        if self.max_new_tokens < 1:
            raise RequestError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}.")
        for name in ("temperature", "top_p"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise RequestError(f"{name} must be a number, got {value!r}.")
        if not (self.temperature >= 0.0 and math.isfinite(self.temperature)):
            raise RequestError(f"temperature must be 0 (greedy) or a finite number above 0, got {self.temperature}.")
        if not 0.0 < self.top_p <= 1.0:
            raise RequestError(f"top_p must be in (0, 1], got {self.top_p}.")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise RequestError(f"seed must be a whole number or None, got {self.seed!r}.")

    @property
    def greedy(self) -> bool:
        return self.temperature < MIN_SAMPLING_TEMPERATURE

    @property
    def generator_seed(self) -> int | None:
        """The seed for a torch generator: ``seed`` modulo 2**64 (torch refuses 2**64 and above)."""
        return None if self.seed is None else self.seed % SEED_MODULUS


def clean_question(question: str) -> str:
    """The question without control characters (tab and newline stay) or surrounding white space.

    Control characters (NUL, escape, bell, carriage return, ...) come from pasted terminal output
    and mean nothing to a model; an empty question, or one of nothing but them, is refused.
    """
    if not isinstance(question, str):
        raise RequestError(f"The question must be text, got a {type(question).__name__}.")
    stripped = "".join(char for char in question if not _is_control(char)).strip()
    if not stripped:
        raise RequestError("The question is empty: ask something about the image.")
    return stripped


def _is_control(char: str) -> bool:
    return char not in "\t\n" and unicodedata.category(char) == "Cc"


def refuse_special_tokens(prompt: str, special_tokens: Iterable[str]) -> None:
    """Refuse a prompt that spells one of the model's special tokens (``<image>``, ``<|im_end|>``, ...).

    The tokenizer would read it as the token itself: a second picture slot, or the end of the turn.
    """
    found = sorted(token for token in special_tokens if token and token in prompt)
    if found:
        raise RequestError(
            f"The question contains {', '.join(map(repr, found))}, which this model reserves for its own "
            "markup (pictures, turns): remove or reword it."
        )


def fit_to_context(options: GenerationOptions, prompt_tokens: int, context_tokens: int | None) -> GenerationOptions:
    """``options`` with ``max_new_tokens`` cut to the room the context leaves after the prompt.

    A prompt (question and picture) that fills the context is refused, never truncated: cutting
    it would silently drop part of the question or of the picture.
    """
    if context_tokens is None:
        return options
    room = context_tokens - prompt_tokens
    if room < 1:
        raise RequestError(
            f"The question and the picture make {prompt_tokens} tokens; this model's context holds "
            f"{context_tokens} for the prompt and the answer together. The question is refused, not truncated: "
            f"shorten it by at least {1 - room} tokens, or use a smaller picture."
        )
    return replace(options, max_new_tokens=min(options.max_new_tokens, room))

#: ``device=`` values; ``vlm_notebook.runtime`` resolves them when a model is made.
DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
#: ``dtype=`` values.
DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")


def runtime_flags() -> list[tuple[str, dict[str, Any]]]:
    """``--device`` and ``--dtype`` with their argparse settings (for the command line and the magics)."""
    return [
        ("--device", {"default": "auto", "help": f"where it runs: {', '.join(DEVICE_CHOICES)} (default auto)"}),
        ("--dtype", {"default": "auto", "choices": DTYPE_CHOICES, "help": "number format (default auto)"}),
    ]
