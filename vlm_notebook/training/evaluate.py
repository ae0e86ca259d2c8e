"""Exact-match evaluation of a saved ``shapes-*`` checkpoint, loaded as a user would.

The directory is loaded with ``AutoProcessor`` and ``AutoModelForImageTextToText``; each
question goes through the chat template, the processor and greedy ``generate``; only the
new tokens are decoded (special tokens skipped, leading space stripped) and compared
with the expected answer exactly.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, PreTrainedModel, ProcessorMixin

from vlm_notebook import shapes
from vlm_notebook.models.hf import chat_messages

MAX_NEW_TOKENS = 64  # a Japanese caption is up to 40 byte tokens


@dataclass(frozen=True)
class Case:
    """One picture, one prompt and the exact answer expected."""

    scene: shapes.Scene
    image: Image.Image
    prompt: str
    answer: str


@dataclass
class Score:
    """Exact matches per prompt, plus a few failures for the record."""

    correct: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    total: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    failures: list[dict[str, str]] = field(default_factory=list)

    def add(self, case: Case, output: str, keep_failures: int = 20) -> None:
        """Record one generated ``output`` for ``case``."""
        self.total[case.prompt] += 1
        if output == case.answer:
            self.correct[case.prompt] += 1
        elif len(self.failures) < keep_failures:
            self.failures.append(
                {"scene": _scene_name(case.scene), "prompt": case.prompt, "expected": case.answer, "got": output}
            )

    @property
    def accuracy(self) -> float:
        """Overall exact-match rate."""
        return sum(self.correct.values()) / max(1, sum(self.total.values()))

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready summary."""
        per_prompt = {p: f"{self.correct[p]}/{n}" for p, n in self.total.items()}
        return {
            "exact": sum(self.correct.values()),
            "total": sum(self.total.values()),
            "accuracy": round(self.accuracy, 4),
            "per_prompt": per_prompt,
            "failures": self.failures,
        }


def _scene_name(scene: shapes.Scene) -> str:
    return f"{scene.colour}-{scene.shape}-on-{scene.background}"


ProcessorLoader = Callable[[Path], Any]


def load(directory: Path, load_processor: ProcessorLoader | None = None) -> tuple[ProcessorMixin, PreTrainedModel]:
    """Load a saved checkpoint directory the way users will: Auto classes (or the family's
    own processor loader), fp32, eval mode."""
    processor = (load_processor or AutoProcessor.from_pretrained)(directory)
    model = AutoModelForImageTextToText.from_pretrained(directory, dtype=torch.float32)
    model.eval()
    return cast(ProcessorMixin, processor), cast(PreTrainedModel, model)


def ask(processor: ProcessorMixin, model: PreTrainedModel, image: Image.Image, prompt: str) -> str:
    """Greedy answer to ``prompt`` about ``image``: only the new text, left-stripped."""
    text = processor.apply_chat_template(chat_messages(prompt), add_generation_prompt=True)
    inputs = processor(text=text, images=[image], return_tensors="pt")
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
    new_tokens = cast(torch.Tensor, output)[0, inputs["input_ids"].shape[1] :]
    decoded = processor.decode(new_tokens, skip_special_tokens=True)
    return cast(str, decoded).lstrip()


def _pairs(scene: shapes.Scene, languages: Sequence[str]) -> list[tuple[str, str]]:
    return [pair for language in languages for pair in shapes.examples(scene, language)]


def canonical_cases(languages: Sequence[str] = ("en",)) -> list[Case]:
    """Every scene's canonical drawing with every (prompt, answer) pair: 72 x 6 cases in English."""
    return [
        Case(scene, shapes.draw(scene).image, prompt, answer)
        for scene in shapes.all_scenes()
        for prompt, answer in _pairs(scene, languages)
    ]


def random_cases(seed: int, per_scene: int = 2, languages: Sequence[str] = ("en",)) -> list[Case]:
    """``per_scene`` random-position drawings of every scene, each with every pair."""
    rng = random.Random(seed)
    cases: list[Case] = []
    for scene in shapes.all_scenes():
        for _ in range(per_scene):
            image = shapes.draw(scene, rng=rng).image
            cases.extend(Case(scene, image, p, a) for p, a in _pairs(scene, languages))
    return cases


def score(
    processor: ProcessorMixin,
    model: PreTrainedModel,
    cases: Iterable[Case],
    progress: Callable[[int], None] | None = None,
) -> Score:
    """Ask every case and count exact matches."""
    result = Score()
    for index, case in enumerate(cases):
        result.add(case, ask(processor, model, case.image, case.prompt))
        if progress is not None:
            progress(index + 1)
    return result


def evaluate_dir(
    directory: Path,
    random_seed: int,
    per_scene: int = 2,
    languages: Sequence[str] = ("en",),
    load_processor: ProcessorLoader | None = None,
) -> dict[str, Any]:
    """Load ``directory`` and score it on the canonical and on a random-position set."""
    processor, model = load(directory, load_processor)
    canonical = score(processor, model, canonical_cases(languages))
    randomised = score(processor, model, random_cases(random_seed, per_scene, languages))
    return {
        "canonical": canonical.as_dict(),
        "random": {"seed": random_seed, "per_scene": per_scene, **randomised.as_dict()},
    }
