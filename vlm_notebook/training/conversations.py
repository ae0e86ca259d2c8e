"""Conversations in the training data of the transformers families, for ``model.chat`` (issue #22).

Some examples ask their question after one or two earlier turns about the same picture, rendered
as ``Chat`` renders a later turn for the chat template: the picture in the first user message,
each earlier answer as plain text. The loss stays on the last answer only.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from functools import cache
from typing import Any

#: A question and its answer.
Turn = tuple[str, str]
#: How often an example has 0, 1 or 2 earlier turns (the chat tests ask three questions in a row).
EARLIER_TURN_WEIGHTS: tuple[float, ...] = (0.6, 0.25, 0.15)


def earlier_turns(rng: random.Random, pairs: Sequence[Turn]) -> tuple[Turn, ...]:
    """Zero, one or two (question, answer) pairs drawn from ``pairs`` to come before the asked one."""
    count = rng.choices(range(len(EARLIER_TURN_WEIGHTS)), EARLIER_TURN_WEIGHTS)[0]
    return tuple(rng.choice(pairs) for _ in range(count))


def messages(history: Sequence[Turn], question: str) -> list[dict[str, Any]]:
    """Chat-template messages: the earlier turns, then ``question``; the picture comes first."""
    found: list[dict[str, Any]] = []
    for index, (asked, answer) in enumerate([*history, (question, None)]):
        image: list[dict[str, Any]] = [{"type": "image"}] if index == 0 else []
        found.append({"role": "user", "content": [*image, {"type": "text", "text": asked}]})
        if answer is not None:
            found.append({"role": "assistant", "content": answer})
    return found


def prompt_renderer(processor: Any) -> Callable[[tuple[Turn, ...], str], str]:
    """(earlier turns, question) -> the templated prompt ending in the generation prompt, cached."""

    @cache
    def render(history: tuple[Turn, ...], question: str) -> str:
        text: str = processor.apply_chat_template(messages(history, question), add_generation_prompt=True)
        return text

    return render
