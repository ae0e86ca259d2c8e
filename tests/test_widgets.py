"""The ipywidgets front end, driven from Python without a browser.

The coalescing helper is tested on its own with fast token sources; the widget is tested with
the shipped `shapes-smolvlm` checkpoint. What the front end would receive is observed as the
Output widget's `outputs` states (each state is one comm message), and uploads are simulated
through `set_state` with the wire format, the path a browser's upload takes.
"""

from __future__ import annotations

import io
import itertools
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from types import MappingProxyType
from typing import Any

import ipywidgets as widgets
import pytest
import torch
from holds import held_at_call
from PIL import Image

from vlm_notebook import ImageError, RequestError, shapes
from vlm_notebook.models import Moondream, SmolVLM
from vlm_notebook.widgets import SmolVLMWidget, VLMWidget
from vlm_notebook.widgets._coalesce import Coalescer, set_output_text
from vlm_notebook.widgets._controls import choice_control
from vlm_notebook.widgets._question import QuestionBox

RED_CIRCLE = shapes.Scene("circle", "red", "white")
BLUE_SQUARE = shapes.Scene("square", "blue", "gray")
RATE = 20.0


def picture(scene: shapes.Scene = RED_CIRCLE) -> Image.Image:
    return shapes.draw(scene).image


def png(scene: shapes.Scene) -> bytes:
    buffer = io.BytesIO()
    picture(scene).save(buffer, format="PNG")
    return buffer.getvalue()


class OutputRecorder:
    """Every state an Output widget takes, in order: what the front end would be sent."""

    def __init__(self, output: Any) -> None:
        self.states: list[tuple[dict[str, Any], ...]] = []
        self._changed = threading.Condition()
        output.observe(self._record, names="outputs")

    def _record(self, change: dict[str, Any]) -> None:
        with self._changed:
            self.states.append(change["new"])
            self._changed.notify_all()

    @property
    def texts(self) -> list[str]:
        return [state[0]["text"] for state in self.states if state]

    @property
    def shown(self) -> str:
        return self.texts[-1] if self.texts else ""

    def wait_until(self, condition: Callable[[], bool], timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(condition, timeout)


def grows(texts: list[str]) -> bool:
    """Each text extends the one before: one answer growing, never replaced or mixed."""
    return all(later.startswith(earlier) and later != earlier for earlier, later in itertools.pairwise(texts))


def upload(widget: VLMWidget, name: str, mime: str, content: bytes) -> None:
    """What the browser sends when a file is picked; ipywidgets 8 turns it into a tuple of dicts."""
    file = {"name": name, "type": mime, "size": len(content), "last_modified": 1_700_000_000_000,
            "content": memoryview(content)}
    widget.upload.set_state({"value": [file]})


def worker_threads() -> list[str]:
    names = ("vlm-notebook-widget", "vlm-notebook-coalesce", "vlm-notebook-generate")
    return [thread.name for thread in threading.enumerate() if thread.name in names and thread.is_alive()]


@contextmanager
def paced_by_the_front_end(model: SmolVLM, widget: VLMWidget, recorder: OutputRecorder) -> Iterator[None]:
    """Compute each token only once the Output shows all the text generated before it.

    shapes-smolvlm writes a caption in a few milliseconds, within one frame at 20 updates a
    second, so it would arrive in one or two updates; SmolVLM-256M on this CPU takes about 95 ms
    a token. Pacing the real model by what the front end has shown makes streaming observable
    without sleeps or timing. (`lm_head` runs once per generated token, the prefill's included.)
    """

    def wait_for_the_screen(module: torch.nn.Module, args: object) -> None:
        # On a timeout, go on: the test's assertions say what went wrong.
        recorder.wait_until(lambda: recorder.shown == widget.text, timeout=10)

    handle = model.model.lm_head.register_forward_pre_hook(wait_for_the_screen)
    try:
        yield
    finally:
        handle.remove()


# The coalescing helper ----------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_a_fast_token_source_is_shown_at_a_bounded_rate_and_the_last_update_is_whole() -> None:
    output = widgets.Output()
    recorder = OutputRecorder(output)
    chunks = [f" {index}" for index in range(5000)]
    started = time.monotonic()
    coalescer = Coalescer(partial(set_output_text, output), max_rate=RATE)
    for index, chunk in enumerate(chunks):
        coalescer.add(chunk)
        if index % 10 == 0:
            time.sleep(0.002)  # thousands of tokens a second, over about a second
    coalescer.close(timeout=10)
    elapsed = time.monotonic() - started
    texts = recorder.texts
    assert texts[-1] == "".join(chunks), "the last update carries the whole text"
    assert len(texts) <= 1 + elapsed * RATE, f"{len(texts)} updates in {elapsed:.2f} s exceed {RATE}/s"
    assert len(texts) < len(chunks) / 10, "chunks are coalesced, not sent one by one"
    assert grows(texts)
    assert all(len(state) == 1 and state[0]["name"] == "stdout" for state in recorder.states), "one stream entry"
    assert coalescer.updates == len(texts) and coalescer.error is None


@pytest.mark.timeout(30)
def test_pending_text_is_shown_without_waiting_for_another_chunk() -> None:
    shown: list[str] = []
    arrived = threading.Condition()
    all_added = threading.Event()

    def show(text: str) -> None:
        # A loaded machine may pause this test between two adds for longer than an interval; hold
        # the first update until all three chunks are in, so at most one update precedes the last.
        all_added.wait(10)
        with arrived:
            shown.append(text)
            arrived.notify_all()

    coalescer = Coalescer(show, max_rate=RATE)
    try:
        coalescer.add("A")
        coalescer.add(" red")
        coalescer.add(" circle")
        all_added.set()
        with arrived:  # the source has gone quiet; the text must still reach the screen
            assert arrived.wait_for(lambda: shown and shown[-1] == "A red circle", timeout=10), shown
    finally:
        coalescer.close(timeout=10)
    assert shown[-1] == "A red circle" and len(shown) <= 2


@pytest.mark.timeout(30)
def test_a_source_without_chunks_gives_no_update_and_adding_after_close_is_refused() -> None:
    shown: list[str] = []
    coalescer = Coalescer(shown.append)
    coalescer.close(timeout=10)
    assert shown == [] and coalescer.updates == 0
    with pytest.raises(RuntimeError, match="after close"):
        coalescer.add("late")


@pytest.mark.timeout(30)
def test_a_failing_show_is_kept_quietly_and_the_coalescer_still_closes(capfd: pytest.CaptureFixture[str]) -> None:
    def show(text: str) -> None:
        raise ConnectionError("comm closed")

    coalescer = Coalescer(show)
    coalescer.add("A")
    coalescer.add(" red")
    coalescer.close(timeout=10)
    assert isinstance(coalescer.error, ConnectionError) and coalescer.updates == 0
    assert capfd.readouterr() == ("", ""), "a worker thread prints nothing"
    assert not worker_threads()


def test_the_rate_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        Coalescer(print, max_rate=0)


# The widget with the shipped checkpoint ----------------------------------------------------


@pytest.mark.timeout(60)
def test_the_answer_streams_into_one_growing_output_entry(shapes_smolvlm: SmolVLM) -> None:
    widget = SmolVLMWidget(shapes_smolvlm, image=picture())
    recorder = OutputRecorder(widget.output)
    started = time.monotonic()
    with paced_by_the_front_end(shapes_smolvlm, widget, recorder):
        assert widget.run()
        text = widget.wait(30)
    elapsed = time.monotonic() - started
    expected = shapes_smolvlm.caption(picture())
    texts = recorder.texts
    assert text == widget.text == texts[-1] == expected, "the last update carries the whole answer"
    assert len(texts[:-1]) >= 2, f"the Output changed at least twice before the end: {texts}"
    assert grows(texts)
    assert all(len(state) == 1 for state in recorder.states), "one growing stream entry, never one per token"
    assert widget.output.outputs == ({"output_type": "stream", "name": "stdout", "text": expected},)
    assert len(texts) <= 1 + elapsed * RATE
    assert not worker_threads(), "every worker thread has ended"


@pytest.mark.timeout(60)
def test_run_returns_at_once_while_the_model_loads_and_generates() -> None:
    model = SmolVLM("shapes-smolvlm")  # not loaded: Run must not load it on the kernel's thread
    widget = VLMWidget(model, image=picture())
    loaded_on: list[str] = []
    load = model.load

    def record_the_loading_thread() -> SmolVLM:
        loaded_on.append(threading.current_thread().name)
        return load()  # type: ignore[return-value]

    model.load = record_the_loading_thread  # type: ignore[method-assign]
    with model._generation_lock:  # another generation holds the model: ours must wait, not the kernel
        assert widget.run()
        assert widget.running and widget.output.outputs == ()
        assert widget.run_button.disabled and not widget.stop_button.disabled
    assert widget.wait(30) == "A red circle on a white background."
    assert loaded_on and threading.current_thread().name not in loaded_on, "loaded on the worker, not the kernel"
    assert model.loaded and not widget.running
    assert not widget.run_button.disabled and widget.stop_button.disabled


@pytest.mark.timeout(60)
def test_stop_ends_the_generation_within_a_token(shapes_smolvlm: SmolVLM) -> None:
    widget = SmolVLMWidget(shapes_smolvlm, image=picture())
    whole = shapes_smolvlm.caption(picture())
    with held_at_call(shapes_smolvlm.model.lm_head, 3) as (reached, resume):
        assert widget.run()
        assert reached.wait(10), "generation reached its third token"
        widget.stop_button.click()  # the kernel handles the click while the worker generates
        resume.set()
        text = widget.wait(30)
    stats = widget.stats
    assert stats is not None and stats.finish_reason == "cancelled"
    assert stats.tokens <= 3, "two tokens before Stop, at most one after"
    assert text and text != whole and text == shapes_smolvlm.caption(picture(), max_new_tokens=stats.tokens)
    assert widget.output.outputs[0]["text"] == text, "the last update carries everything generated"
    assert "cancelled" in widget.figures.value and widget.message.value == ""
    assert not worker_threads()
    assert widget.run() and widget.wait(30) == whole, "the widget and the model keep working"


@pytest.mark.timeout(60)
def test_a_second_run_while_one_is_going_is_refused_and_never_mixes_answers(shapes_smolvlm: SmolVLM) -> None:
    widget = SmolVLMWidget(shapes_smolvlm, image=picture())
    recorder = OutputRecorder(widget.output)
    with shapes_smolvlm._generation_lock:  # keep the first run going
        assert widget.run()
        assert not widget.run("What shape is it?")
        assert "running" in widget.message.value
        widget.run_button.click()
        assert "running" in widget.message.value
    assert widget.wait(30) == "A red circle on a white background."
    assert all("A red circle on a white background.".startswith(text) for text in recorder.texts), "one answer"
    assert widget.message.value == "", "the refusal is cleared when the run ends"
    assert widget.run() and widget.wait(30) == "A circle.", "the question asked meanwhile runs now"


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("name", "mime", "content", "message"),
    [
        ("notes.txt", "text/plain", b"a shopping list", "not an image"),
        ("empty.png", "image/png", b"", "empty"),
        ("broken.png", "image/png", png(RED_CIRCLE)[:100], "corrupt or truncated"),
    ],
    ids=["text-file", "empty-file", "truncated-png"],
)
def test_a_bad_upload_gives_a_message_and_a_good_upload_then_works(
    shapes_smolvlm: SmolVLM, name: str, mime: str, content: bytes, message: str
) -> None:
    widget = SmolVLMWidget(shapes_smolvlm, image=picture())
    upload(widget, name, mime, content)
    assert name in widget.message.value and message in widget.message.value
    assert "Traceback" not in widget.message.value
    assert "The picture before it is still the one used." in widget.message.value
    assert widget.image is not None and widget.preview.layout.display is None, "what is shown is what is used"
    assert widget.run() and widget.wait(30) == "A red circle on a white background."

    upload(widget, "blue.png", "image/png", png(BLUE_SQUARE))
    assert widget.message.value == "" and bytes(widget.preview.value).startswith(b"\x89PNG")
    assert widget.preview.layout.display is None, "the preview shows"
    assert widget.run() and widget.wait(30) == shapes_smolvlm.caption(picture(BLUE_SQUARE))
    assert widget.wait(30) == "A blue square on a gray background."


@pytest.mark.timeout(60)
def test_a_pasted_picture_is_used_as_an_upload_is_and_a_paste_of_no_picture_is_refused(shapes_smolvlm: SmolVLM) -> None:
    widget = SmolVLMWidget(shapes_smolvlm, image=picture())
    widget.paste._handle_custom_msg({"kind": "nothing"}, [])  # what the browser sends after pasting text
    assert "The clipboard holds no picture" in widget.message.value and widget.image is not None
    widget.paste._handle_custom_msg({"kind": "picture", "name": "blue.png"}, [memoryview(png(BLUE_SQUARE))])
    assert widget.message.value == "" and widget.preview.layout.display is None
    assert widget.run() and widget.wait(30) == "A blue square on a gray background."


@pytest.mark.timeout(60)
def test_a_model_failure_shows_a_short_message_and_everything_keeps_working(
    shapes_smolvlm: SmolVLM, capfd: pytest.CaptureFixture[str]
) -> None:
    widget = SmolVLMWidget(shapes_smolvlm, image=picture())
    # Also stores the picture's work, which runs lm_head once: without it (this test run alone, or
    # the picture dropped from the model's store) the third call would be the second token.
    before = shapes_smolvlm.caption(picture(), max_new_tokens=2)
    calls = 0

    def fail_on_third(module: torch.nn.Module, args: object, output: object) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise RuntimeError("forward failed")

    handle = shapes_smolvlm.model.lm_head.register_forward_hook(fail_on_third)
    try:
        assert widget.run()
        with pytest.raises(RuntimeError, match="forward failed"):
            widget.wait(30)
    finally:
        handle.remove()
    assert widget.message.value == "The model failed: RuntimeError: forward failed"
    assert widget.output.outputs[0]["text"] == before, "the two tokens before the failure stay"
    assert "error" in widget.figures.value
    assert capfd.readouterr() == ("", ""), "no traceback printed into some cell"
    assert widget.run() and widget.wait(30) == "A red circle on a white background."
    assert widget.message.value == ""


@pytest.mark.timeout(60)
def test_question_mode_streams_the_answer_in_whole_characters(shapes_smolvlm: SmolVLM) -> None:
    widget = SmolVLMWidget(shapes_smolvlm, image=picture())
    assert widget.question.disabled and widget.question.layout.display == "none", "for question mode only"
    assert widget.run("What colour is the shape? Answer in Japanese.")
    assert widget.wait(30) == "赤 🔴" == widget.output.outputs[0]["text"]
    assert widget.mode.value == "question" and not widget.question.disabled
    assert widget.question.layout.display is None
    assert widget.options["prompt"].disabled, "caption options do not apply to questions"
    assert widget.options["prompt"].layout.display == "none", "and are not shown for them"
    assert widget.run(mode="caption") and widget.wait(30) == "A red circle on a white background."


@pytest.mark.timeout(60)
def test_the_family_prompt_and_max_new_tokens_reach_the_model(shapes_smolvlm: SmolVLM) -> None:
    widget = SmolVLMWidget(shapes_smolvlm, image=picture(BLUE_SQUARE))
    assert widget.run(prompt="Describe this", max_new_tokens=3)
    assert widget.options["prompt"].value == "Describe this" and widget.max_new_tokens.value == 3
    assert widget.wait(30) == shapes_smolvlm.caption(picture(BLUE_SQUARE), "Describe this", max_new_tokens=3)
    assert widget.stats is not None and widget.stats.finish_reason == "length"
    with pytest.raises(RequestError, match="SmolVLM has no caption option length"):
        widget.run(length="short")


@pytest.mark.timeout(60)
def test_the_figures_line_shows_the_runs_stats(shapes_smolvlm: SmolVLM) -> None:
    widget = VLMWidget(shapes_smolvlm, image=picture())
    assert widget.figures.value == "" and widget.stats is None and widget.text == ""
    assert widget.run() and widget.wait(30)
    stats = widget.stats
    assert stats is not None and stats.finish_reason == "stop"
    figures = widget.figures.value
    assert figures.startswith(stats.summary()), figures
    assert "80 image tokens" in figures and "(stop, " in figures and "ended " in figures


@pytest.mark.timeout(120)
def test_two_widgets_share_one_model_and_each_gets_its_own_answer(shapes_smolvlm: SmolVLM) -> None:
    scenes = [RED_CIRCLE, BLUE_SQUARE, shapes.Scene("triangle", "green", "black")]
    boxes = [SmolVLMWidget(shapes_smolvlm, image=picture(scene)) for scene in scenes]
    recorders = [OutputRecorder(box.output) for box in boxes]
    assert all(box.run() for box in boxes), "each widget runs; the model serves them in turn"
    answers = [box.wait(60) for box in boxes]
    assert answers == [shapes.caption(scene) for scene in scenes]
    for recorder, answer in zip(recorders, answers, strict=True):
        assert all(answer.startswith(text) for text in recorder.texts), "no answer leaks into another Output"


def test_vlm_widget_shows_the_controls_the_family_widget_declares(shapes_smolvlm: SmolVLM) -> None:
    for widget in (VLMWidget(shapes_smolvlm), SmolVLMWidget(shapes_smolvlm)):
        assert list(widget.options) == ["prompt"]
        assert isinstance(widget.options["prompt"], widgets.Text)
        assert widget.options["prompt"].placeholder == "Describe this image."


def test_a_family_widget_declares_its_options_as_data(shapes_smolvlm: SmolVLM) -> None:
    """How Moondream's widget will look: one mapping entry per option; unknown names get a text box."""

    class WithLength(SmolVLM):  # a stand-in family with a length option (Moondream's, later)
        caption_options = ("prompt", "length", "detail_level")  # type: ignore[assignment]  # SmolVLM: 1 option

    class LengthWidget(SmolVLMWidget):
        option_controls = MappingProxyType({"length": choice_control("Length", ("short", "normal", "long"), "normal")})

    widget = LengthWidget(WithLength("shapes-smolvlm"))
    assert list(widget.options) == ["prompt", "length", "detail_level"]
    length = widget.options["length"]
    assert length.options == ("short", "normal", "long") and length.value == "normal"
    assert isinstance(widget.options["detail_level"], widgets.Text)
    assert widget.options["detail_level"].description == "Detail level"


def test_an_image_given_in_python_is_previewed_and_a_bad_one_is_refused(shapes_smolvlm: SmolVLM) -> None:
    widget = VLMWidget(shapes_smolvlm, image=png(BLUE_SQUARE))
    assert widget.image is not None and widget.image.size == (64, 64)
    assert Image.open(io.BytesIO(bytes(widget.preview.value))).size == (64, 64)
    with pytest.raises(ImageError, match="not an image"):
        VLMWidget(shapes_smolvlm, image=b"not a picture")
    with pytest.raises(TypeError, match="needs a model"):
        SmolVLMWidget("shapes-smolvlm")  # type: ignore[arg-type]


@pytest.mark.timeout(30)
def test_without_an_image_run_is_refused_with_a_message(shapes_smolvlm: SmolVLM) -> None:
    widget = SmolVLMWidget(shapes_smolvlm)
    widget.run_button.click()
    assert "No image" in widget.message.value and not widget.running
    assert widget.wait(1) == ""


@pytest.mark.timeout(60)
def test_the_plain_text_repr_is_deterministic(shapes_smolvlm: SmolVLM) -> None:
    first, second = SmolVLMWidget(shapes_smolvlm, image=picture()), VLMWidget(shapes_smolvlm)
    assert repr(first) == "SmolVLMWidget(model='shapes-smolvlm')"
    assert first._repr_mimebundle_()["text/plain"] == repr(first)
    assert repr(second) == "VLMWidget(model='shapes-smolvlm')"
    assert first.run() and first.wait(30)
    assert repr(first) == "SmolVLMWidget(model='shapes-smolvlm')", "a run changes nothing in the repr"
    assert "application/vnd.jupyter.widget-view+json" in first._repr_mimebundle_()


@pytest.mark.timeout(60)
def test_closing_the_widget_stops_its_generation_quietly(
    shapes_smolvlm: SmolVLM, capfd: pytest.CaptureFixture[str]
) -> None:
    widget = SmolVLMWidget(shapes_smolvlm, image=picture())
    with held_at_call(shapes_smolvlm.model.lm_head, 2) as (reached, resume):
        assert widget.run()
        assert reached.wait(10)
        widget.close()
        resume.set()
        widget.wait(30)
    assert widget.stats is not None and widget.stats.finish_reason == "cancelled"
    assert capfd.readouterr() == ("", "") and not worker_threads()


def test_each_familys_choices_come_from_the_options_data(shapes_smolvlm: SmolVLM) -> None:
    from vlm_notebook.languages import CAPTION_PROMPTS
    from vlm_notebook.widgets import MoondreamWidget, Qwen2VLWidget, VLMWidget
    from vlm_notebook.widgets._controls import option_control

    language = option_control("language")(shapes_smolvlm)
    assert language.options == tuple(CAPTION_PROMPTS) and language.value == "en", "Qwen2-VL's languages"
    length = option_control("length")(shapes_smolvlm)
    assert length.options == ("short", "normal", "long") and length.value == "normal", "Moondream's lengths"
    refusal = "Unknown caption language 'xx'; known languages: en, ja, zh, ko, fr, de, es"  # the API's words
    with pytest.raises(RequestError, match=refusal):
        language.refuse_unless_a_choice("xx")  # what run(language="xx") meets
    assert VLMWidget._family_widgets["qwen2vl"] is Qwen2VLWidget
    assert VLMWidget._family_widgets["moondream"] is MoondreamWidget


def test_the_preview_is_hidden_until_there_is_a_picture_and_the_upload_has_a_tooltip(shapes_smolvlm: SmolVLM) -> None:
    widget = SmolVLMWidget(shapes_smolvlm)
    assert widget.preview.layout.display == "none" and widget.upload.tooltip
    widget.close()


@pytest.mark.timeout(60)
def test_zero_typed_as_max_tokens_is_refused_at_run_with_the_apis_message(shapes_smolvlm: SmolVLM) -> None:
    widget = SmolVLMWidget(shapes_smolvlm, image=picture())
    widget.max_new_tokens.set_state({"value": 0})  # as the browser sends what was typed
    widget.run_button.click()
    assert widget.message.value == "max_new_tokens must be at least 1, got 0." and not widget.running
    assert widget.output.outputs == () and widget.stats is None, "nothing started"
    widget.max_new_tokens.set_state({"value": 2})
    widget.run_button.click()
    assert widget.wait(30) == shapes_smolvlm.caption(picture(), max_new_tokens=2) and widget.message.value == ""
    widget.close()


@pytest.mark.timeout(60)
def test_a_refused_run_changes_no_control(shapes_smolvlm: SmolVLM) -> None:
    widget = SmolVLMWidget(shapes_smolvlm, image=picture())
    for bad in ({"max_new_tokens": 0}, {"max_new_tokens": 2.5}, {"prompt": 5}):
        with pytest.raises(RequestError):
            widget.run("What shape is it?", **bad)
    assert widget.mode.value == "caption" and widget.question.value == "" and widget.options["prompt"].value == ""
    assert widget.max_new_tokens.value == 256 and not widget.running
    widget.close()


def press_enter(box: QuestionBox, typed: str) -> None:
    """What the browser sends when Enter is pressed after typing ``typed``: the box's value may still
    hold less of it (the browser holds text updates back while the kernel is busy)."""
    box.set_state({"value": typed[:3]})
    box._handle_custom_msg({"event": "submit", "value": typed}, [])


@pytest.mark.timeout(60)
def test_enter_in_the_question_box_runs_what_was_typed_and_the_boxes_line_up(shapes_smolvlm: SmolVLM) -> None:
    widget = SmolVLMWidget(shapes_smolvlm, image=picture())
    assert widget.title.value == "<b>shapes-smolvlm</b> (smolvlm)", "the model's name is shown"
    widths = {control.style.description_width for control in (widget.max_new_tokens, *widget.options.values())}
    assert widths == {widget.question.description_width}, "every box starts at the same place"
    press_enter(widget.question, "What shape is it?")
    assert not widget.running, "Enter in a hidden (caption mode) box runs nothing"
    widget.mode.value = "question"
    press_enter(widget.question, "What shape is it?")
    assert widget.wait(30) == "A circle." and widget.question.value == "What shape is it?"
    press_enter(widget.question, "What shape is it?")  # again: a second run, as a click on Run would start
    assert widget.wait(30) == "A circle." and widget.message.value == ""


@pytest.mark.timeout(60)
def test_before_the_first_token_the_figures_say_what_is_going_on_and_for_how_long(shapes_smolvlm: SmolVLM) -> None:
    widget = SmolVLMWidget(shapes_smolvlm, image=picture(BLUE_SQUARE))
    widget.preparing.result(30)  # the picture's work is done: the wait is the prompt's
    with held_at_call(shapes_smolvlm.model.lm_head, 1) as (reached, resume):
        assert widget.run(prompt="Describe this")
        assert reached.wait(30)
        time.sleep(1.2)  # two ticks
        waiting = widget.figures.value
        resume.set()
        widget.wait(30)
    assert re.fullmatch(r"reading the picture and the prompt \(\d+ tokens\)… [1-9]\d* s", waiting), waiting
    assert "ended" in widget.figures.value and "tokens/s" in widget.figures.value, "the wait line is gone"
    assert isinstance(widget.figures, widgets.HTML) and widget.figures.tooltip, "it wraps, and says what it means"
    time.sleep(0.7)
    assert "ended" in widget.figures.value, "no wait line after the end"


def test_the_wait_line_names_the_phase() -> None:
    from vlm_notebook.stream import StreamStats
    from vlm_notebook.widgets._run import waiting_line

    assert waiting_line(False, None, 3.2) == "loading the model… 3 s"
    assert waiting_line(True, None, 0.4) == "preparing the picture… 0 s"
    assert waiting_line(True, StreamStats(prompt_tokens=41), 12.0).startswith("reading the picture and the prompt (41")


@pytest.mark.timeout(120)
def test_moondream_widget_detects_and_points_on_its_preview_and_a_caption_clears_the_marks(
    shapes_moondream: Moondream,
) -> None:
    from vlm_notebook.widgets import MoondreamWidget

    widget = MoondreamWidget(shapes_moondream, image=picture())
    plain = widget.preview.value
    assert widget.run("circle", mode="detect")
    assert widget.wait(60) == "1 circle: box x 0.25-0.75, y 0.25-0.75"
    assert widget.found == shapes_moondream.detect(picture(), "circle")
    assert widget.preview.value != plain and widget.question.description == "Object"
    assert widget.figures.value.startswith("detect in ")
    assert widget.run("circle", mode="point") and widget.wait(60) == "1 circle: point x 0.50, y 0.50"
    assert widget.run(mode="caption") and widget.wait(60) == "A red circle on a white background."
    assert widget.preview.value == plain and widget.found is None
    with pytest.raises(RequestError, match="'detect', 'point'"):
        widget.run(mode="segment")
    widget.close()


@pytest.mark.timeout(120)
def test_the_figures_of_a_point_run_name_it_even_if_the_mode_changed_meanwhile(shapes_moondream: Moondream) -> None:
    from vlm_notebook.widgets import MoondreamWidget

    widget = MoondreamWidget(shapes_moondream, image=picture())
    widget.preparing.result(60)  # the picture encoded, so the next pass through the text model is the point's
    with held_at_call(shapes_moondream.network.text, 1) as (reached, resume):
        assert widget.run("circle", mode="point")
        assert reached.wait(30)
        widget.mode.value = "detect"  # the user clicks another mode while the point run works
        resume.set()
        assert widget.wait(60) == "1 circle: point x 0.50, y 0.50"
    assert widget.figures.value.startswith("point in ")
    widget.close()


def test_only_a_family_that_finds_things_offers_detect_and_point(shapes_smolvlm: SmolVLM) -> None:
    widget = SmolVLMWidget(shapes_smolvlm, image=picture())
    assert [value for _, value in widget.mode.options] == ["caption", "question"]
    with pytest.raises(RequestError, match="'caption', 'question', got 'detect'"):
        widget.run("circle", mode="detect")
    widget.close()
