"""The chat widget: a conversation about one picture, each answer streaming into the transcript.

The kernel's thread only starts a turn; the conversation (``model.chat``), loading the model and
generating run on the turn's own thread (``Run``), so sending returns at once and Stop reaches the
turn. Answers are shown as Markdown. A new picture starts a new conversation; Clear forgets the
conversation and keeps the picture.
"""

from __future__ import annotations

import html
import threading
from concurrent.futures import Future
from typing import Any

import ipywidgets as widgets
from PIL import Image

from ..chat import Chat
from ..errors import ImageError, RequestError
from ..images import load_image
from ..models.base import VLM
from ..options import DEFAULT_MAX_NEW_TOKENS
from ..stream import TextStream
from ._coalesce import DEFAULT_MAX_RATE
from ._paste import PasteBox
from ._question import QuestionBox
from ._run import Run, RunHolder, figures_box, figures_line, short_message, waiting_line
from ._widget import ERROR_COLOUR, thumbnail_png

_BUSY = "An answer is coming: wait for it to end, or press Stop."
_NO_IMAGE = "No picture yet: upload or paste one, or pass image= when creating the widget."
_NO_QUESTION = "Type a question first."


class ChatWidget(RunHolder, widgets.VBox):  # type: ignore[misc]  # ipywidgets is untyped
    """Talk with ``model`` about a picture: upload or paste one (or pass ``image=``), type a question, press
    Enter or Send; each answer streams in under its question, with the figures of the turn. Stop
    ends the answer within a token (a stopped turn is not kept in the conversation); Clear starts
    the conversation again. ``messages`` holds it, as ``Chat.messages`` does.

    >>> picture = shapes.draw(shapes.Scene("circle", "red", "white")).image
    >>> widget = ChatWidget(SmolVLM("shapes-smolvlm"), image=picture)
    >>> widget.ask("What colour is the background?")  # what typing it and pressing Enter does
    True
    >>> widget.wait(30)
    'White.'
    """

    # Class defaults, as RunHolder._run is.
    _chat: Chat | None = None
    _owned: tuple[Any, ...] = ()

    def __init__(self, model: VLM, *, image: Any = None, max_updates_per_second: float = DEFAULT_MAX_RATE) -> None:
        if not isinstance(model, VLM):
            raise TypeError(f"ChatWidget needs a model such as SmolVLM('shapes-smolvlm'), got {model!r}.")
        if not max_updates_per_second > 0:
            raise ValueError(f"max_updates_per_second must be positive, got {max_updates_per_second}.")
        picture = load_image(image) if image is not None else None  # refused before any widget is made
        self.model = model
        self.max_updates_per_second = max_updates_per_second
        self.max_new_tokens = DEFAULT_MAX_NEW_TOKENS
        self._start_lock = threading.Lock()
        self._picture: Image.Image | None = None
        self._clear_when_done = False
        #: The model's work on the current picture, started when it arrived (``model.prepare``).
        self.preparing: Future[None] | None = None
        self._make_controls()
        super().__init__(children=self._layout())
        if picture is not None:
            self._use_image(picture)

    # Python access -----------------------------------------------------------------------------

    @property
    def image(self) -> Image.Image | None:
        """The picture talked about (RGB); set it to anything ``load_image`` accepts to start again on it."""
        return self._picture

    @image.setter
    def image(self, image: Any) -> None:
        self._use_image(load_image(image))

    @property
    def messages(self) -> list[dict[str, Any]]:
        """The conversation so far (OpenAI-style messages; empty before the first answer)."""
        return self._chat.messages if self._chat is not None else []

    def ask(self, question: str) -> bool:
        """Send ``question``, as typing it and pressing Enter does; returns at once. False, with the
        reason shown in the widget, when an answer is coming, there is no picture or no question."""
        if not isinstance(question, str):
            raise RequestError(f"The question must be text, got a {type(question).__name__}.")
        return self._send(question)

    def clear(self) -> None:
        """Forget the conversation and empty the transcript (stopping an answer that is coming)."""
        with self._start_lock:
            if self.running:
                self._clear_when_done = True  # done by the turn's end, once the conversation is free
                self.stop()
                return
            self._forget()

    def close(self) -> None:
        """Stop any answer and close the widget and the widgets it is made of."""
        self.stop()
        for part in (*(self.transcript.children if self._owned else ()), *self._owned):
            part.close()
        super().close()

    def __repr__(self) -> str:
        return f"ChatWidget(model={self.model.name!r})"

    # Building ----------------------------------------------------------------------------------

    def _make_controls(self) -> None:
        self.upload = widgets.FileUpload(
            accept="image/*", multiple=False, description="Picture", tooltip="Choose a picture to talk about"
        )
        self.paste = PasteBox(self._take_picture, on_refused=lambda text: self._say(text, error=True))
        self.preview = widgets.Image(format="png", layout=widgets.Layout(width="192px", display="none"))
        self.transcript = widgets.VBox(layout=widgets.Layout(border="1px solid #ccc", padding="4px", min_height="2em"))
        self.question = QuestionBox(
            lambda: self._send(self.question.value), placeholder="Ask about the picture, then Enter",
            layout=widgets.Layout(flex="1 1 auto", min_width="8em"),
        )
        narrow = {"layout": widgets.Layout(width="auto")}
        self.send_button = widgets.Button(description="Send", button_style="primary", icon="paper-plane", **narrow)
        self.stop_button = widgets.Button(description="Stop", icon="stop", disabled=True, **narrow)
        self.clear_button = widgets.Button(
            description="Clear", icon="eraser", tooltip="Start the conversation again", **narrow
        )
        self.figures = figures_box()
        self.message = widgets.Label(value="")
        self._owned = (self.transcript, self.upload, self.paste, self.preview, self.question, self.send_button,
                       self.stop_button, self.clear_button, self.figures, self.message)
        self.upload.observe(self._on_upload, names="value")
        self.send_button.on_click(lambda _: self._send(self.question.value))
        self.stop_button.on_click(lambda _: self.stop())
        self.clear_button.on_click(lambda _: self.clear())

    def _layout(self) -> list[Any]:
        wrap = widgets.Layout(flex_flow="row wrap", align_items="center")
        asking = widgets.HBox([self.question, self.send_button, self.stop_button, self.clear_button], layout=wrap)
        picture = widgets.HBox([self.upload, self.paste, self.preview], layout=wrap)
        return [picture, self.transcript, asking, self.figures, self.message]

    # Kernel thread: pictures, questions, starting a turn -----------------------------------------

    def _on_upload(self, change: dict[str, Any]) -> None:
        if not change["new"]:
            return
        upload = change["new"][-1]
        self._take_picture(bytes(upload["content"]), upload["name"])

    def _take_picture(self, data: bytes, name: str) -> None:
        """An uploaded or pasted picture's bytes: talk about it from now on, or say why not."""
        try:
            self._use_image(load_image(data))
        except (ImageError, RequestError) as error:  # the conversation and its picture stay as they were
            self._say(f"Cannot use {name!r}: {error}", error=True)

    def _use_image(self, picture: Image.Image) -> None:
        with self._start_lock:
            if self.running:
                raise RequestError("An answer is coming: stop it before changing the picture.")
            self._picture = picture
            self._forget()
        self.preview.value = thumbnail_png(picture)
        self.preview.layout.display = None
        self._say("")
        self.preparing = self.model.prepare(picture)  # the picture's work, while the question is typed

    def _send(self, question: str) -> bool:
        with self._start_lock:  # Enter and a click on Send, or two clicks, must not both start
            refusal = self._refusal(question)
            if refusal is not None:
                self._say(refusal, error=True)
                return False
            picture = self._picture
            asked, answer = widgets.HTML(value=f"<b>You:</b> {html.escape(question.strip())}"), widgets.Output()
            self.transcript.children = (*self.transcript.children, asked, answer)
            self.question.clear()
            self.figures.value = "loading the model…" if not self.model.loaded else "waiting for the model…"
            self._say("")
            self.send_button.disabled, self.stop_button.disabled = True, False
            self._run = Run(
                lambda: self._open_stream(picture, question), lambda run, text: self._show(answer, run, text),
                lambda run: self._finish(run, (asked, answer)), self.max_updates_per_second, self._start_lock,
                lambda run, seconds: setattr(
                    self.figures, "value", waiting_line(self.model.loaded, run.stats, seconds)
                ),
            )
            self._run.start()
        return True

    def _refusal(self, question: str) -> str | None:
        if self.running:
            return _BUSY
        if self._picture is None:
            return _NO_IMAGE
        if not question.strip():
            return _NO_QUESTION
        return None

    def _forget(self) -> None:
        """A new conversation on the current picture: empty transcript, nothing kept (lock held)."""
        self._chat = None
        old, self.transcript.children = self.transcript.children, ()
        for part in old:
            part.close()
        self.figures.value = ""

    # Worker threads: the conversation, showing, finishing ----------------------------------------

    def _open_stream(self, picture: Image.Image | None, question: str) -> TextStream:
        if self._chat is None:  # made here: it loads the model, which the kernel's thread must not wait for
            self._chat = self.model.chat(picture)
        stream = self._chat.ask(question, stream=True, max_new_tokens=self.max_new_tokens)
        assert isinstance(stream, TextStream)
        return stream

    def _show(self, answer: widgets.Output, run: Run, text: str) -> None:
        data = {"text/markdown": text, "text/plain": text}
        answer.outputs = ({"output_type": "display_data", "data": data, "metadata": {}},)
        self.figures.value = figures_line(run)

    def _finish(self, run: Run, turn: tuple[Any, Any]) -> None:
        """The turn's end (``Run`` holds the start lock)."""
        self.figures.value = figures_line(run)
        if run.error is not None:  # a refused question leaves no trace in the transcript
            self._say(short_message(run.error), error=True)
            if not run.text:
                self.transcript.children = tuple(c for c in self.transcript.children if c not in turn)
                for part in turn:
                    part.close()
        elif self.message.value == _BUSY:  # the refusal is over; other news (a bad upload) stays
            self._say("")
        if self._clear_when_done:
            self._clear_when_done = False
            self._forget()
        self.send_button.disabled, self.stop_button.disabled = False, True

    def _say(self, text: str, error: bool = False) -> None:
        self.message.style.text_color = ERROR_COLOUR if error else None
        self.message.value = text
