"""What each number format changes: first-token logits against fp32, and the answers.

    python benchmarks/number_formats.py [--scenes N] [--out FILE]

For each shipped checkpoint (and SmolVLM-256M's published shape with random weights, where the
numbers are those of a real-size model), loaded once per format: ``float32``, ``bfloat16`` (what
``dtype="auto"`` picks on CPUs with bf16 instructions, weights packed for oneDNN where it can) and
``int8=True``. For each scene's question, the logits of the first answer token are compared with
fp32's: max relative difference = max |logit - fp32 logit| / max |fp32 logit|, the largest over
the questions; and whether the greedy answers equal fp32's. Writes
``results/number_formats.md``. On a CPU without bf16 instructions bf16 runs, slowly, through
other kernels: the figures belong to the machine named in the file.
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from vlm_notebook import cpu, shapes
from vlm_notebook.random_checkpoints import random_checkpoint
from vlm_notebook.registry import get_model

RESULTS = Path(__file__).resolve().parent / "results"
FORMATS: dict[str, dict[str, Any]] = {"bfloat16": {"dtype": "bfloat16"}, "int8": {"dtype": "float32", "int8": True}}


def questions(count: int) -> list[tuple[Any, str]]:
    """``count`` scenes spread over the set, each with every question asked of it."""
    scenes = shapes.all_scenes()
    chosen = scenes[:: max(1, len(scenes) // count)][:count]
    return [(shapes.draw(scene).image, question) for scene in chosen for question, _ in shapes.questions(scene)]


def load(name: str, **settings: Any) -> Any:
    """A model of any local family by name or directory, loaded with ``settings``."""
    family = get_model(name)
    model = type(family)(name, **settings)
    return model.load()


def compare(name: str, asked: list[tuple[Any, str]], answers: bool) -> list[dict[str, Any]]:
    reference = load(name, dtype="float32")
    base = [reference._first_logits(picture, question).float() for picture, question in asked]
    base_answers = [reference.query(picture, question) for picture, question in asked] if answers else []
    del reference
    rows = []
    for label, settings in FORMATS.items():
        model = load(name, **settings)
        pairs = [(model._first_logits(picture, question).float(), logits)
                 for (picture, question), logits in zip(asked, base, strict=True)]
        worst = max(float((found - logits).abs().max() / logits.abs().max()) for found, logits in pairs)
        same_first = sum(int(found.argmax()) == int(logits.argmax()) for found, logits in pairs)
        same = (sum(model.query(picture, question) == answer for (picture, question), answer
                    in zip(asked, base_answers, strict=True)) if answers else None)
        rows.append({"model": name, "format": label, "ran in": model.dtype, "questions": len(asked),
                     "max relative logit difference": worst, "same first token": same_first, "same answer": same})
        del model
    return rows


def markdown(rows: list[dict[str, Any]], machine: str) -> str:
    keys = list(rows[0])
    lines = [
        "# What the number formats change (first-token logits against fp32)",
        "",
        f"{datetime.now(UTC).isoformat(timespec='seconds')} · {machine} · torch {torch.__version__} · "
        f"bf16 weights packed for oneDNN: {'yes' if cpu.packs_bf16() else 'no'}",
        "",
        "| " + " | ".join(keys) + " |",
        "|" + "---|" * len(keys),
    ]
    for row in rows:
        cells = [f"{value:.2e}" if isinstance(value, float) else ("-" if value is None else str(value))
                 for value in row.values()]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", *NOTES.splitlines()]
    return "\n".join(lines) + "\n"


NOTES = """\
`python benchmarks/number_formats.py`. Max relative logit difference: the largest, over the
questions, of max |logit - fp32 logit| / max |fp32 logit| for the first answer token. Same first
token: the greedy first token equals fp32's. Same answer: the whole greedy answer equals fp32's
(shipped checkpoints only; the random-weight model's answers mean nothing). Random weights give
near-uniform logits, where any rounding can change the first token."""


def cpu_name() -> str:
    return cpu.model_name() + (" with bf16 instructions" if cpu.has_fast_bf16() else " without bf16 instructions")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--scenes", type=int, default=8, help="scenes per model, each with all its questions")
    parser.add_argument("--out", type=Path, default=RESULTS / "number_formats.md")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    asked = questions(args.scenes)
    rows = []
    for name in ("shapes-smolvlm", "shapes-qwen2vl", "shapes-moondream"):
        rows += compare(name, asked, answers=True)
    rows += compare(str(random_checkpoint("smolvlm-256m")), asked[:4], answers=False)
    for row in rows[-len(FORMATS):]:
        row["model"] = "SmolVLM-256M shape, random weights"
    args.out.write_text(markdown(rows, cpu_name()))
    print(args.out.read_text())


if __name__ == "__main__":
    main()
