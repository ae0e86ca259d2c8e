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

import torch

from vlm_notebook import shapes
from vlm_notebook.training.loop import Batch, BatchMaker, answer_labels
from vlm_notebook.training.pictures import PictureSource

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


def answer_batch_maker(
    processor: Any, batch_size: int, source: PictureSource, pairs: Callable[[shapes.Scene], Sequence[Turn]], end: str
) -> BatchMaker:
    """Batches of random scenes through the real processor and chat template: earlier turns (English),
    then a (prompt, answer) pair drawn from ``pairs(scene)``, the answer followed by ``end`` (the
    token that ends the model's turn). Labels cover only the last answer and its end."""
    render = prompt_renderer(processor)
    scenes = shapes.all_scenes()

    def make_batch(rng: random.Random) -> Batch:
        samples = []
        for _ in range(batch_size):
            scene = rng.choice(scenes)
            history = earlier_turns(rng, shapes.examples(scene))
            prompt, answer = rng.choice(pairs(scene))
            samples.append((source.drawing(rng, scene).image, render(history, prompt), answer + end))
        texts = [prompt + answer for _, prompt, answer in samples]
        images = [[image] for image, _, _ in samples]  # one picture per text, as every processor reads it
        inputs = processor(text=texts, images=images, padding=True, padding_side="right", return_tensors="pt")
        lengths = [len(processor.tokenizer(answer, add_special_tokens=False)["input_ids"]) for _, _, answer in samples]
        batch = {k: v for k, v in inputs.items() if isinstance(v, torch.Tensor)}
        batch["labels"] = answer_labels(batch["input_ids"], batch["attention_mask"], lengths)
        return batch

    return make_batch
