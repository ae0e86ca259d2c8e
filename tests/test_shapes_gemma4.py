"""The shipped ``shapes-gemma4`` (issue #19): a current architecture, Gemma 4, trained on the shapes like
the other shipped checkpoints and loaded through the generic transformers family. Exact answers,
streamed text equal to the plain text and to transformers' own greedy ``generate``, follow-ups that
reuse the picture's work, and conversations."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from vlm_notebook import registry, shapes
from vlm_notebook.models.generic import TransformersModel, load_image_only_processor
from vlm_notebook.stream import TextStream
from vlm_notebook.training import evaluate

SCENES = shapes.all_scenes()
RED_CIRCLE = shapes.Scene("circle", "red", "white")


def picture(scene: shapes.Scene = RED_CIRCLE) -> Image.Image:
    return shapes.draw(scene).image


def test_the_name_is_a_gemma4_checkpoint_of_the_generic_family(shapes_gemma4: TransformersModel) -> None:
    entry = registry.resolve("shapes-gemma4")
    assert entry.family == "transformers" and Path(entry.source).is_dir()
    assert json.loads((Path(entry.source) / "config.json").read_text())["model_type"] == "gemma4"
    assert type(shapes_gemma4) is TransformersModel
    assert type(shapes_gemma4.model).__name__ == "Gemma4ForConditionalGeneration"


@pytest.mark.timeout(300)
def test_every_scene_is_captioned_exactly(shapes_gemma4: TransformersModel) -> None:
    captions = {scene: shapes_gemma4.caption(picture(scene)) for scene in SCENES}
    wrong = {scene: text for scene, text in captions.items() if text != shapes.caption(scene)}
    assert not wrong, f"{len(wrong)} of {len(SCENES)} captions wrong: {wrong}"


@pytest.mark.timeout(600)
def test_every_question_is_answered_exactly(shapes_gemma4: TransformersModel) -> None:
    wrong = {}
    for scene in SCENES:
        for question, answer in shapes.questions(scene):
            if (text := shapes_gemma4.query(picture(scene), question)) != answer:
                wrong[(scene, question)] = text
    assert not wrong, f"{len(wrong)} answers wrong: {wrong}"


@pytest.fixture(scope="module")
def transformers_alone() -> tuple[Any, Any]:
    """The checkpoint's processor and model loaded by transformers itself, no vlm-notebook in between."""
    return evaluate.load(Path(registry.resolve("shapes-gemma4").source), load_image_only_processor)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("scene", SCENES[::9], ids=lambda s: f"{s.colour}-{s.shape}-on-{s.background}")
def test_streamed_text_is_the_plain_text_and_transformers_own_answer(
    shapes_gemma4: TransformersModel, transformers_alone: tuple[Any, Any], scene: shapes.Scene
) -> None:
    processor, reference = transformers_alone
    for question in ("Describe this image.", *(q for q, _ in shapes.questions(scene))):
        stream = shapes_gemma4.query(picture(scene), question, stream=True)
        assert isinstance(stream, TextStream)
        chunks = list(stream)
        assert all(chunks) and stream.stats.finish_reason == "stop"
        plain = shapes_gemma4.query(picture(scene), question)
        assert "".join(chunks) == plain == evaluate.ask(processor, reference, picture(scene), question)


@pytest.mark.timeout(120)
def test_japanese_streams_whole_characters(shapes_gemma4: TransformersModel) -> None:
    question, answer = shapes.questions(RED_CIRCLE)[-1]
    assert not answer.isascii()
    chunks = list(shapes_gemma4.query(picture(), question, stream=True))
    assert "".join(chunks) == answer and "\ufffd" not in "".join(chunks) and len(chunks) > 1


@pytest.mark.timeout(120)
def test_a_follow_up_reuses_the_picture_and_answers_as_if_asked_cold(shapes_gemma4: TransformersModel) -> None:
    shapes_gemma4.image_cache.clear()
    image = picture(shapes.Scene("triangle", "green", "gray"))
    first = shapes_gemma4.query(image, "What colour is the shape?", stream=True)
    assert first.wait(60) == "Green."
    follow_up = shapes_gemma4.query(image, "What shape is it?", stream=True)
    assert follow_up.wait(60) == "A triangle."
    assert (first.stats.image_cache, follow_up.stats.image_cache) == ("miss", "hit")
    assert follow_up.stats.vision_seconds == 0.0


@pytest.mark.timeout(300)
def test_follow_up_questions_in_a_conversation_get_the_right_answers(shapes_gemma4: TransformersModel) -> None:
    wrong = {}
    for scene in SCENES[::12]:
        chat = shapes_gemma4.chat(picture(scene))
        for question, expected in shapes.questions(scene)[:3]:
            if (answer := chat.ask(question)) != expected:
                wrong[(scene, question)] = answer
        assert len(chat) == 6
    assert not wrong, wrong


def test_bf16_answers_as_fp32_does() -> None:
    model = registry.get_model("shapes-gemma4", dtype="bfloat16")
    assert model.load().model.dtype == torch.bfloat16
    assert model.caption(picture()) == shapes.caption(RED_CIRCLE)
