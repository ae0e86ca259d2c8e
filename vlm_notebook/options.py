"""How to generate: length and sampling settings, checked before any work starts."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import RequestError

DEFAULT_MAX_NEW_TOKENS = 256


@dataclass(frozen=True)
class GenerationOptions:
    """Greedy decoding unless ``temperature`` > 0; ``seed`` makes sampling repeatable."""

    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int):
            raise RequestError(f"max_new_tokens must be a whole number, got {self.max_new_tokens!r}.")
        if self.max_new_tokens < 1:
            raise RequestError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}.")
        if not self.temperature >= 0.0:
            raise RequestError(f"temperature must be 0 (greedy) or more, got {self.temperature}.")
        if not 0.0 < self.top_p <= 1.0:
            raise RequestError(f"top_p must be in (0, 1], got {self.top_p}.")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def clean_question(question: str) -> str:
    """The question stripped of surrounding white space; an empty one is refused."""
    if not isinstance(question, str):
        raise RequestError(f"The question must be text, got a {type(question).__name__}.")
    stripped = question.strip()
    if not stripped:
        raise RequestError("The question is empty: ask something about the image.")
    return stripped
