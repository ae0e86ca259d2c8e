"""The chat widget, driven from Python without a browser (tests/browser drives it in JupyterLab).

What the browser would do goes through the widgets' own messages and state: Enter in the question
box is a "submit" message carrying the text, an upload is the upload's value in the wire format.
Answers are checked against ``model.chat`` asked directly.
"""

from __future__ import annotations

import io
import threading

import pytest
from holds import held_at_call
from PIL import Image

from vlm_notebook import ImageError, RequestError, shapes
from vlm_notebook.models import SmolVLM
from vlm_notebook.models.hf import TransformersVLM
from vlm_notebook.widgets import ChatWidget

BLUE_CIRCLE = shapes.Scene("circle", "blue", "gray")
QUESTIONS = ["What colour is the background?", "What shape is it?", "What colour is the shape?"]


def picture(scene: shapes.Scene = BLUE_CIRCLE) -> Image.Image:
    return shapes.draw(scene).image


def press_enter(widget: ChatWidget, question: str) -> None:
    """Type ``question`` and press Enter: a "submit" message with the text (the box's value may
    still hold less of it: the browser holds updates back while the kernel is busy)."""
    widget.question.set_state({"value": question[:3]})
    widget.question._handle_custom_msg({"event": "submit", "value": question}, [])


def answers(widget: ChatWidget) -> list[str]:
    """The transcript's answers as shown (Markdown), in order."""
    shown = []
    for part in widget.transcript.children[1::2]:
        shown.append(part.outputs[0]["data"]["text/markdown"] if part.outputs else "")
    return shown


def worker_threads() -> list[str]:
    names = ("vlm-notebook-widget", "vlm-notebook-coalesce", "vlm-notebook-generate")
    return [thread.name for thread in threading.enumerate() if thread.name in names and thread.is_alive()]


@pytest.mark.timeout(120)
def test_each_turn_streams_into_the_transcript_and_knows_the_turns_before(model: TransformersVLM) -> None:
    expected_chat = model.chat(picture())
    expected = [expected_chat.ask(question) for question in QUESTIONS]
    widget = ChatWidget(model, image=picture())
    for question in QUESTIONS:
        press_enter(widget, question)
        widget.wait(30)
        assert widget.question.value == "", "the box is emptied for the next question"
    assert answers(widget) == expected
    assert [part.value for part in widget.transcript.children[::2]] == [f"<b>You:</b> {q}" for q in QUESTIONS]
    assert widget.messages == expected_chat.messages
    assert widget.stats is not None and widget.stats.extra["conversation_cache"] == "hit"
    assert "TTFT" in widget.figures.value and "ended" in widget.figures.value
    widget.close()
    assert not worker_threads()


@pytest.mark.timeout(120)
def test_stop_ends_the_answer_and_the_conversation_goes_on_without_it(shapes_smolvlm: SmolVLM) -> None:
    widget = ChatWidget(shapes_smolvlm, image=picture())
    assert widget.ask(QUESTIONS[0]) and widget.wait(30) == "Gray."
    with held_at_call(shapes_smolvlm.model.lm_head, 2) as (reached, resume):
        assert widget.ask("Describe this image.")
        assert reached.wait(30)
        assert not widget.ask(QUESTIONS[1]), "one answer at a time"
        assert "wait for it to end" in widget.message.value
        widget.stop_button.click()
        resume.set()
        widget.wait(30)
    assert widget.message.value == "", "the refusal went with the answer it waited for"
    assert widget.stats is not None and widget.stats.finish_reason == "cancelled"
    assert len(widget.messages) == 2, "the stopped turn is not part of the conversation"
    assert widget.ask(QUESTIONS[1]) and widget.wait(30) == "A circle."
    assert not widget.send_button.disabled and widget.stop_button.disabled


@pytest.mark.timeout(120)
def test_clear_forgets_the_conversation_and_a_new_picture_starts_another(shapes_smolvlm: SmolVLM) -> None:
    widget = ChatWidget(shapes_smolvlm, image=picture())
    widget.ask(QUESTIONS[0])
    widget.wait(30)
    widget.clear_button.click()
    assert widget.transcript.children == () and widget.messages == []
    assert widget.ask(QUESTIONS[2]) and widget.wait(30) == "Blue."
    assert len(widget.messages) == 2
    buffer = io.BytesIO()
    picture(shapes.Scene("square", "red", "white")).save(buffer, format="PNG")
    widget.upload.set_state({"value": [{"name": "red.png", "type": "image/png", "size": len(buffer.getvalue()),
                                        "content": buffer.getvalue(), "last_modified": 0}]})
    assert widget.messages == [] and widget.transcript.children == ()
    assert widget.ask(QUESTIONS[1]) and widget.wait(30) == "A square."


@pytest.mark.timeout(60)
def test_what_cannot_be_asked_is_refused_with_a_message_and_nothing_is_lost(shapes_smolvlm: SmolVLM) -> None:
    empty = ChatWidget(shapes_smolvlm)
    assert not empty.ask(QUESTIONS[0]) and "No picture yet" in empty.message.value
    widget = ChatWidget(shapes_smolvlm, image=picture())
    assert widget.ask(QUESTIONS[0]) and widget.wait(30) == "Gray."
    assert not widget.ask("   ") and "Type a question" in widget.message.value
    widget.ask("\x00\x01")  # nothing but control characters: the model refuses it on the turn's thread
    with pytest.raises(RequestError):
        widget.wait(30)
    assert widget.message.value and len(widget.transcript.children) == 2, "the refused turn leaves no trace"
    widget.upload.set_state({"value": [{"name": "x.png", "type": "image/png", "size": 3, "content": b"abc",
                                        "last_modified": 0}]})
    assert "Cannot use 'x.png'" in widget.message.value and widget.image is not None
    with pytest.raises(RequestError, match="must be text"):
        widget.ask(42)  # type: ignore[arg-type]
    with pytest.raises(ImageError):
        ChatWidget(shapes_smolvlm, image=b"not a picture")
    with pytest.raises(TypeError, match="needs a model"):
        ChatWidget("shapes-smolvlm")  # type: ignore[arg-type]
    assert widget.ask(QUESTIONS[1]) and widget.wait(30) == "A circle.", "the conversation goes on"
    assert len(widget.messages) == 4


def paste(widget: ChatWidget, content: dict[str, str], data: bytes | None = None) -> None:
    """What the paste box's browser code sends after a Ctrl+V (tests/browser pastes for real)."""
    widget.paste._handle_custom_msg(content, [memoryview(data)] if data is not None else [])


@pytest.mark.timeout(60)
def test_a_pasted_picture_starts_a_conversation_and_a_bad_paste_loses_nothing(shapes_smolvlm: SmolVLM) -> None:
    widget = ChatWidget(shapes_smolvlm)
    paste(widget, {"kind": "nothing"})
    assert "The clipboard holds no picture" in widget.message.value and widget.image is None
    buffer = io.BytesIO()
    picture().save(buffer, format="PNG")
    paste(widget, {"kind": "picture", "name": "copied.png"}, buffer.getvalue())
    assert widget.image is not None and widget.message.value == ""
    assert widget.ask(QUESTIONS[0]) and widget.wait(30) == "Gray."
    paste(widget, {"kind": "picture", "name": "broken.png"}, b"abc")
    assert "Cannot use 'broken.png'" in widget.message.value
    paste(widget, {"kind": "too-large", "size": 30 << 20})  # the browser sends no bytes for it
    assert "The pasted picture is 30 MB; a paste can carry at most 8 MB" in widget.message.value
    assert widget.ask(QUESTIONS[1]) and widget.wait(30) == "A circle.", "the picture and the conversation stay"


def test_the_plain_text_repr_is_deterministic(shapes_smolvlm: SmolVLM) -> None:
    assert repr(ChatWidget(shapes_smolvlm)) == "ChatWidget(model='shapes-smolvlm')"


@pytest.mark.timeout(60)
def test_typing_then_clicking_send_asks_once(shapes_smolvlm: SmolVLM) -> None:
    """Leaving the box for the Send button does not send by itself (only Enter and Send do)."""
    widget = ChatWidget(shapes_smolvlm, image=picture())
    widget.question.set_state({"value": QUESTIONS[0]})
    assert not widget.running and widget.transcript.children == ()
    widget.send_button.click()
    assert widget.wait(30) == "Gray." and widget.message.value == ""
    assert len(widget.transcript.children) == 2
