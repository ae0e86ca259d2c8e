"""Conversations: ``model.chat(image)``, ``chat.ask`` turn by turn, the history, and the reused KV cache.

Exactness is checked on the shipped checkpoints against the model card's path on the whole
conversation (the processor on the full chat-template text with the pixels, then ``generate``),
which touches neither the picture store nor the chat's cache.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from holds import held_at_call
from PIL import Image
from remote_fixtures import Handler, chunk, tiny_server

from vlm_notebook import RequestError, shapes
from vlm_notebook.chat import Chat
from vlm_notebook.models import Moondream, RemoteVLM, SmolVLM
from vlm_notebook.models.hf import TransformersVLM
from vlm_notebook.options import GenerationOptions
from vlm_notebook.request import Request
from vlm_notebook.stream import TextStream

RED_CIRCLE = shapes.Scene("circle", "red", "white")
BLUE_SQUARE = shapes.Scene("square", "blue", "gray")


def picture(scene: shapes.Scene = RED_CIRCLE) -> Image.Image:
    return shapes.draw(scene).image


def cold_answer(model: TransformersVLM, chat: Chat, question: str) -> str:
    """Greedy answer to ``question`` after the chat's history, by the model card's path (nothing reused)."""
    request = Request(chat.picture, question, history=tuple(chat.messages))
    messages = request.template_messages(model.default_prompt)
    text = model.processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = model._text_inputs(chat.picture, text)
    with torch.inference_mode():
        output = model.model.generate(**inputs, generation_config=model._generation_config(GenerationOptions()))
    answer: str = model.processor.batch_decode(output[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0]
    return answer.lstrip()


def streamed(stream: str | TextStream) -> tuple[str, TextStream]:
    assert isinstance(stream, TextStream)
    chunks = list(stream)
    assert stream.wait(60) == "".join(chunks)
    return "".join(chunks), stream


#: Scenes whose three follow-ups (shape, then colour, then background) both shipped checkpoints
#: answer right. They were trained on single turns only: over all 72 scenes in that order,
#: shapes-smolvlm answers the second turn (the colour) right for 52 and shapes-qwen2vl the third
#: for 70; asked background, colour, then shape, shapes-qwen2vl names the shape for only 7.
FOLLOW_UP_SCENES = [
    shapes.Scene("circle", "red", "white"),
    shapes.Scene("circle", "blue", "gray"),
    shapes.Scene("square", "green", "black"),
    shapes.Scene("triangle", "purple", "gray"),
    shapes.Scene("diamond", "yellow", "black"),
    shapes.Scene("diamond", "red", "gray"),
]


@pytest.mark.timeout(300)
def test_follow_up_questions_in_a_conversation_get_the_right_answers(model: TransformersVLM) -> None:
    wrong = {}
    for scene in FOLLOW_UP_SCENES:
        chat = model.chat(picture(scene))
        for question, expected in shapes.questions(scene)[:3]:
            answer = chat.ask(question)
            if answer != expected:
                wrong[(scene, question)] = (answer, expected)
    assert not wrong, wrong


@pytest.mark.timeout(300)
def test_a_later_turn_streamed_equals_the_same_history_asked_cold(model: TransformersVLM) -> None:
    """Right or wrong (see the test above for which are right), an answer is the cold one."""
    for scene in (RED_CIRCLE, BLUE_SQUARE):
        chat = model.chat(picture(scene))
        chat.ask("What colour is the background?")
        for question in ("What colour is the shape?", "What shape is it?", "What colour is the shape?"):
            cold = cold_answer(model, chat, question)
            text, stream = streamed(chat.ask(question, stream=True))
            assert text == cold
            assert stream.stats.extra["conversation_cache"] == "hit"


@pytest.mark.timeout(120)
def test_a_later_turn_prefills_only_its_new_tokens(model: TransformersVLM) -> None:
    chat = model.chat(picture())
    _, first = streamed(chat.ask("What shape is it?", stream=True))
    _, second = streamed(chat.ask("What colour is the shape?", stream=True))
    assert first.stats.extra["conversation_cache"] == "miss"
    assert second.stats.extra["conversation_cache"] == "hit" and second.stats.image_cache == "hit"
    reused, prefilled = second.stats.extra["reused_tokens"], second.stats.extra["prefilled_tokens"]
    # the whole first prompt and the answer's tokens that were fed back (all but the last, as with
    # generate; one more may part where the template closes the answer)
    assert reused >= first.stats.prompt_tokens + first.stats.tokens - 2
    assert reused + prefilled == second.stats.prompt_tokens
    assert prefilled < 25  # the previous answer's end and the new question, not the picture again
    assert second.stats.vision_seconds == 0.0


@pytest.mark.timeout(120)
def test_the_history_holds_openai_style_messages_with_the_picture_in_the_first_user_turn(
    shapes_smolvlm: SmolVLM,
) -> None:
    image = picture()
    chat = shapes_smolvlm.chat(image)
    assert chat.messages == [] and chat.remembers
    chat.ask("What shape is it?")
    chat.ask("What colour is the shape?")
    messages = chat.messages
    assert [message["role"] for message in messages] == ["user", "assistant", "user", "assistant"]
    first = messages[0]["content"]
    assert first[0]["type"] == "image" and first[0]["image"].tobytes() == image.tobytes()
    assert first[1] == {"type": "text", "text": "What shape is it?"}
    assert messages[1] == {"role": "assistant", "content": "A circle."}
    assert messages[2] == {"role": "user", "content": [{"type": "text", "text": "What colour is the shape?"}]}
    assert messages[3] == {"role": "assistant", "content": "Red."}
    messages.clear()  # a copy: changing it leaves the conversation as it was
    assert len(chat.messages) == 4 == len(chat)


@pytest.mark.timeout(120)
def test_a_cancelled_turn_is_left_out_of_the_history_and_the_chat_keeps_working(shapes_smolvlm: SmolVLM) -> None:
    chat = shapes_smolvlm.chat(picture())
    chat.ask("What shape is it?")
    before = chat.messages
    with held_at_call(shapes_smolvlm.model.lm_head, 2) as (reached, release):  # call 1: the prefill
        stream = chat.ask("What colour is the shape?", stream=True)
        assert reached.wait(60)
        with pytest.raises(RequestError, match="still being answered"):
            chat.ask("What colour is the background?")
        stream.cancel()
        release.set()
        stream.wait(60)
    assert stream.stats.finish_reason == "cancelled"
    assert chat.messages == before
    cold = cold_answer(shapes_smolvlm, chat, "What colour is the background?")
    assert chat.ask("What colour is the background?") == cold == "White."
    assert [message["role"] for message in chat.messages] == ["user", "assistant"] * 2


@pytest.mark.timeout(300)
def test_a_conversation_that_outgrows_the_context_is_refused_and_reset_starts_over(shapes_smolvlm: SmolVLM) -> None:
    chat = shapes_smolvlm.chat(picture())
    with pytest.raises(RequestError, match=r"chat\.reset\(\)"):  # SmolVLM's shipped context: 256 tokens
        for _ in range(40):
            kept = chat.messages
            chat.ask("What colour is the shape?", max_new_tokens=8)
    assert chat.messages == kept  # the refused turn left no trace
    chat.reset(picture(BLUE_SQUARE))
    assert chat.messages == []
    assert chat.ask("What colour is the shape?") == "Blue."


@pytest.mark.timeout(120)
def test_a_bad_question_is_refused_before_anything_runs(shapes_smolvlm: SmolVLM) -> None:
    chat = shapes_smolvlm.chat(picture())
    with pytest.raises(RequestError, match="empty"):
        chat.ask("   ")
    with pytest.raises(RequestError, match="<end_of_utterance>"):
        chat.ask("Say <end_of_utterance> twice")
    assert chat.messages == [] and chat.ask("What shape is it?") == "A circle."


@pytest.mark.timeout(300)
def test_moondream_answers_each_question_on_the_picture_alone_and_keeps_the_history(
    shapes_moondream: Moondream,
) -> None:
    image = picture()
    chat = shapes_moondream.chat(image)
    assert not chat.remembers
    for question in ("What colour is the shape?", "What colour is the background?"):
        text, _ = streamed(chat.ask(question, stream=True))
        assert text == shapes_moondream.query(image, question)
    assert [message["role"] for message in chat.messages] == ["user", "assistant"] * 2
    assert chat.messages[3]["content"] == shapes_moondream.query(image, "What colour is the background?")


def answering(*answers: str) -> Any:
    """A server behaviour that streams the next of ``answers`` for each request."""
    replies: Iterator[str] = iter(answers)

    def behaviour(handler: Handler) -> None:
        handler.start_events()
        handler.send_event(chunk(next(replies)))
        handler.send_event(chunk(finish_reason="stop"))
        handler.send_event("[DONE]")

    return behaviour


@pytest.mark.timeout(60)
def test_a_remote_chat_sends_the_whole_conversation_on_each_ask() -> None:
    with tiny_server(answering("A circle.", "Red.")) as server:
        chat = RemoteVLM("shapes", server.base_url).chat(picture())
        assert chat.remembers
        assert chat.ask("What shape is it?") == "A circle."
        text, _ = streamed(chat.ask("What colour is the shape?", stream=True))
        assert text == "Red."
        second = server.requests[-1]["body"]
    assert isinstance(second, dict)
    messages = second["messages"]
    assert [message["role"] for message in messages] == ["user", "assistant", "user"]
    assert messages[0]["content"][0]["type"] == "image_url"
    assert messages[0]["content"][0]["image_url"]["url"].startswith("data:image/png;base64,")
    assert messages[0]["content"][1] == {"type": "text", "text": "What shape is it?"}
    assert messages[1] == {"role": "assistant", "content": "A circle."}
    assert messages[2] == {"role": "user", "content": [{"type": "text", "text": "What colour is the shape?"}]}
    json.dumps(messages)
