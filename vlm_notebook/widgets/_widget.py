"""The interactive widget: an image, a question or caption request, and an answer that streams in."""

from __future__ import annotations

import html
import io
import threading
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar, Literal

import ipywidgets as widgets
from PIL import Image

from ..errors import ImageError, RequestError
from ..images import load_image
from ..models.base import VLM
from ..options import DEFAULT_MAX_NEW_TOKENS, GenerationOptions
from ..overlay import overlay
from ..stream import TextStream, TokenSink
from ._coalesce import DEFAULT_MAX_RATE, set_output_text
from ._controls import (
    LABELLED,
    ControlFactory,
    build_controls,
    option_values,
    set_option_values,
)
from ._paste import PasteBox
from ._question import QuestionBox
from ._run import Run, RunHolder, figures_box, figures_line, short_message, waiting_line

Mode = Literal["caption", "question", "detect", "point"]
#: Modes that find a named thing in the picture (the widgets of families that can offer them).
_FINDING = ("detect", "point")
#: Modes whose text box holds what to ask about or find.
_ASKING = ("question", *_FINDING)

_BUSY = "A generation is running: wait for it to end, or press Stop."
_NO_IMAGE = "No image yet: upload or paste one, or pass image= when creating the widget."
_PREVIEW_PIXELS = 256  # the preview travels over the comm: a thumbnail, never the original
ERROR_COLOUR = "#b00020"


@dataclass(frozen=True)
class _Request:
    """What Run asks for, read from the controls on the kernel's thread."""

    mode: Mode
    question: str
    options: dict[str, Any]
    max_new_tokens: int


class VLMWidget(RunHolder, widgets.VBox):  # type: ignore[misc]  # ipywidgets is untyped
    """An interactive front end to one model: image in, streamed answer out.

    Run starts a generation on a worker thread and returns at once; the answer streams into
    ``output`` at most ``max_updates_per_second`` times a second; Stop ends it within a token.
    A second Run while one is going is refused with a message. Errors (an upload that is not an
    image, a model failure) show as a short message and the widget keeps working. Several
    widgets may share one model: the model serves them one at a time. A picture is handed to
    ``model.prepare`` the moment it arrives, so its encoding runs while the question is typed.

    >>> picture = shapes.draw(shapes.Scene("circle", "red", "white")).image
    >>> widget = VLMWidget(SmolVLM("shapes-smolvlm"), image=picture)
    >>> widget  # in a notebook this shows the widget: upload, Run, Stop, the answer streaming in
    VLMWidget(model='shapes-smolvlm')
    >>> widget.run()  # what clicking Run does; returns at once
    True
    >>> widget.wait(30)
    'A red circle on a white background.'
    """

    family: ClassVar[str | None] = None  # the family a subclass serves; None: any
    option_controls: ClassVar[Mapping[str, ControlFactory]] = MappingProxyType({})  # option name -> control
    _family_widgets: ClassVar[dict[str, type[VLMWidget]]] = {}
    _owned: tuple[Any, ...] = ()  # a class default: see RunHolder._run

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "family" in cls.__dict__:  # so VLMWidget(model) shows the controls the family declares
            VLMWidget._family_widgets[cls.__dict__["family"]] = cls

    def __init__(
        self, model: VLM, *, image: Any = None, max_updates_per_second: float = DEFAULT_MAX_RATE
    ) -> None:
        self._check_family(model)
        if not max_updates_per_second > 0:
            raise ValueError(f"max_updates_per_second must be positive, got {max_updates_per_second}.")
        picture = load_image(image) if image is not None else None  # a bad image is refused before any widget is made
        self.model = model
        self.max_updates_per_second = max_updates_per_second
        self._start_lock = threading.Lock()
        self._message_lock = threading.Lock()
        self._image: Image.Image | None = None
        #: The model's work on the current picture, started when it arrived (``model.prepare``).
        self.preparing: Future[None] | None = None
        self._make_controls()
        children = self._layout()
        super().__init__(children=children)
        if picture is not None:
            self._use_image(picture)

    # Python access -----------------------------------------------------------------------------

    @property
    def image(self) -> Image.Image | None:
        """The picture the next run uses (RGB); set it to anything ``load_image`` accepts."""
        return self._image

    @image.setter
    def image(self, image: Any) -> None:
        self._use_image(load_image(image))

    def run(
        self, question: str | None = None, *, mode: Mode | None = None, max_new_tokens: int | None = None,
        **options: Any,
    ) -> bool:
        """Start a generation, as clicking Run does, and return at once.

        ``question`` switches to question mode; ``mode``, ``max_new_tokens`` and the family's
        caption ``options`` (e.g. ``prompt=``) are put into their controls first; a value the API
        would refuse is refused here, as the API refuses it (RequestError), and no control changes.
        Returns False, with the reason shown in the widget, when a run is going, there is no image,
        or the Max tokens box holds a number the API refuses (below 1).
        """
        self._apply(question, mode, max_new_tokens, options)
        return self._start()

    def close(self) -> None:
        """Stop any generation and close the widget and the widgets it is made of."""
        self.stop()
        for part in self._owned:
            part.close()
        super().close()

    def __repr__(self) -> str:
        # Saved in notebooks as text/plain: only what the cell itself fixed, nothing that varies.
        return f"{type(self).__name__}(model={self.model.name!r})"

    # Building ----------------------------------------------------------------------------------

    def _check_family(self, model: VLM) -> None:
        if not isinstance(model, VLM):
            raise TypeError(f"{type(self).__name__} needs a model such as SmolVLM('shapes-smolvlm'), got {model!r}.")
        if self.family is not None and model.family != self.family:
            raise TypeError(
                f"{type(self).__name__} is for {self.family} models; {model!r} is a {model.family} model: "
                "use VLMWidget(model)."
            )

    def _make_controls(self) -> None:
        self.upload = widgets.FileUpload(
            accept="image/*", multiple=False, description="Image", tooltip="Choose a picture to ask about"
        )
        self.paste = PasteBox(self._take_picture, on_refused=lambda text: self._say(text, error=True))
        # Hidden until there is a picture: an empty Image shows the browser's broken-image icon.
        self.preview = widgets.Image(format="png", layout=widgets.Layout(width="192px", display="none"))
        self.title = widgets.HTML(value=f"<b>{html.escape(self.model.name)}</b> ({self.model.family})")
        self.mode = widgets.ToggleButtons(options=[("Caption", "caption"), ("Question", "question")])
        # Shown in question mode only (the family's caption options in caption mode); Enter runs.
        self.question = QuestionBox(
            self._start, placeholder="Ask about the image, then Enter", description="Question",
            description_width=LABELLED["description_width"], disabled=True,
            layout=widgets.Layout(display="none", width="var(--jp-widgets-inline-width, 300px)"),
        )
        self.options = build_controls(self.model, self._option_factories())
        # Not a BoundedIntText: it would turn 0 into 1 without a word, where the API refuses 0.
        self.max_new_tokens = widgets.IntText(value=DEFAULT_MAX_NEW_TOKENS, description="Max tokens", style=LABELLED)
        self.run_button = widgets.Button(description="Run", button_style="primary", icon="play")
        self.stop_button = widgets.Button(description="Stop", icon="stop", disabled=True)
        self.output = widgets.Output(layout=widgets.Layout(border="1px solid #ccc", min_height="2em", padding="4px"))
        self.figures = figures_box()
        self.message = widgets.Label(value="")
        self._connect()

    def _option_factories(self) -> dict[str, ControlFactory]:
        """The family widget's controls (so VLMWidget(model) matches it), then this class's own."""
        family_widget = self._family_widgets.get(self.model.family, VLMWidget)
        return {**family_widget.option_controls, **self.option_controls}

    def _connect(self) -> None:
        self.upload.observe(self._on_upload, names="value")
        self.mode.observe(self._on_mode, names="value")
        self.run_button.on_click(lambda _: self._start())
        self.stop_button.on_click(lambda _: self.stop())

    def _layout(self) -> list[Any]:
        buttons = widgets.HBox([self.run_button, self.stop_button])
        request = widgets.VBox([self.mode, self.question, *self.options.values(), self.max_new_tokens, buttons])
        picture = widgets.VBox([self.upload, self.paste, self.preview])
        top = widgets.HBox([picture, request], layout=widgets.Layout(flex_flow="row wrap"))
        self._owned = (top, picture, request, buttons, self.title, self.upload, self.paste, self.preview, self.mode,
                       self.question, *self.options.values(), self.max_new_tokens, self.run_button,
                       self.stop_button, self.output, self.figures, self.message)
        return [self.title, top, self.output, self.figures, self.message]

    # Kernel thread: controls, uploads, starting ----------------------------------------------

    def _on_upload(self, change: dict[str, Any]) -> None:
        if not change["new"]:
            return
        upload = change["new"][-1]
        self._take_picture(bytes(upload["content"]), upload["name"])

    def _take_picture(self, data: bytes, name: str) -> None:
        """An uploaded or pasted picture's bytes: use it from now on, or say why not."""
        try:
            # Decoded here, not at Run, so a bad file is reported the moment it arrives.
            picture = load_image(data)
        except ImageError as error:  # the picture before it, if any, stays in use (and in view)
            kept = " The picture before it is still the one used." if self._image is not None else ""
            self._say(f"Cannot use {name!r}: {error}{kept}", error=True)
            return
        self._use_image(picture)
        self._say("")

    def _use_image(self, picture: Image.Image) -> None:
        self._image = picture
        self.preview.value = thumbnail_png(picture)
        self.preview.layout.display = None
        # Encode ahead: while the user types a question, the model does the picture's work.
        # A failure there (say the model cannot load) shows again, as a message, at Run.
        self.preparing = self.model.prepare(picture)

    def _on_mode(self, change: dict[str, Any]) -> None:
        asking, finding = change["new"] in _ASKING, change["new"] in _FINDING
        self.question.description = "Object" if finding else "Question"
        self.question.placeholder = "What to find, then Enter" if finding else "Ask about the image, then Enter"
        self.question.disabled = not asking
        self.question.layout.display = None if asking else "none"
        for control in self.options.values():
            control.disabled = asking  # the family's options shape captions only
            control.layout.display = "none" if asking else None

    def _apply(
        self, question: str | None, mode: Mode | None, max_new_tokens: int | None, options: dict[str, Any]
    ) -> None:
        modes = [value for _, value in self.mode.options]
        if mode is not None and mode not in modes:
            raise RequestError(f"mode must be one of {', '.join(map(repr, modes))}, got {mode!r}.")
        if question is not None and not isinstance(question, str):
            raise RequestError(f"The question must be text, got a {type(question).__name__}.")
        if max_new_tokens is not None:
            GenerationOptions(max_new_tokens=max_new_tokens)  # the API's own check, and its message
        set_option_values(self.options, options, self.model)
        if question is not None:
            self.question.value = question
            mode = mode or ("question" if self.mode.value not in _ASKING else self.mode.value)
        if mode is not None:
            self.mode.value = mode
        if max_new_tokens is not None:
            self.max_new_tokens.value = max_new_tokens

    def _start(self) -> bool:
        with self._start_lock:  # two clicks, or a click and run(), must not both start
            if self.running:
                self._say(_BUSY, error=True)
                return False
            image = self._image
            if image is None:
                self._say(_NO_IMAGE, error=True)
                return False
            request = self._request()
            try:  # typed into the box: refused as the API refuses it, before anything starts
                GenerationOptions(max_new_tokens=request.max_new_tokens)
            except RequestError as error:
                self._say(str(error), error=True)
                return False
            self._reset_view()
            self._run = Run(lambda: self._open_stream(image, request), self._show, self._finish,
                            self.max_updates_per_second, self._start_lock, self._waiting)
            self._run.start()
        return True

    def _request(self) -> _Request:
        return _Request(self.mode.value, self.question.value, option_values(self.options), self.max_new_tokens.value)

    def _reset_view(self) -> None:
        self.output.outputs = ()  # not clear_output(): that can erase appends that follow it
        self.figures.value = "loading the model…" if not self.model.loaded else "waiting for the model…"
        self._say("")
        self.run_button.disabled = True
        self.stop_button.disabled = False

    # Worker threads: generating, showing, finishing ------------------------------------------

    def _open_stream(self, image: Image.Image, request: _Request) -> TextStream:
        if request.mode == "question":
            return self.model.query(image, request.question, stream=True, max_new_tokens=request.max_new_tokens)
        stream = self.model.caption_with(image, stream=True, options=request.options,
                                         max_new_tokens=request.max_new_tokens)
        assert isinstance(stream, TextStream)
        return stream

    def _waiting(self, run: Run, seconds: float) -> None:
        self.figures.value = waiting_line(self.model.loaded, run.stats, seconds)

    def _show(self, run: Run, text: str) -> None:
        set_output_text(self.output, text)
        self.figures.value = figures_line(run)

    def _finish(self, run: Run) -> None:
        self.figures.value = figures_line(run)
        if run.error is not None:
            self._say(short_message(run.error), error=True)
        else:
            self._say("", replacing=_BUSY)  # the refusal is over; other news (a bad upload) stays
        self.run_button.disabled = False
        self.stop_button.disabled = True

    def _say(self, text: str, error: bool = False, replacing: str | None = None) -> None:
        """Show a one-line message; with ``replacing``, only while that message shows."""
        with self._message_lock:  # written from the kernel's thread and from runs ending
            if replacing is not None and self.message.value != replacing:
                return
            self.message.style.text_color = ERROR_COLOUR if error else None
            self.message.value = text


class SmolVLMWidget(VLMWidget):
    """A widget for SmolVLM models, with SmolVLM's caption prompt.

    >>> widget = SmolVLMWidget(SmolVLM("shapes-smolvlm"), image=picture)
    >>> widget.run(prompt="Describe this")
    True
    """

    family = "smolvlm"


class Qwen2VLWidget(VLMWidget):
    """A widget for Qwen2-VL models, with the caption language as a choice (English by default)."""

    family = "qwen2vl"


class MoondreamWidget(VLMWidget):
    """A widget for Moondream, with the caption length as a choice (short, normal, long), and two
    more modes: Detect draws a box around every object named, Point a point on each, on the preview
    (``vlm_notebook.overlay``); the answer lists them.

    >>> widget = MoondreamWidget(Moondream("shapes-moondream"), image=picture)
    >>> widget.run("circle", mode="detect")
    True
    >>> widget.wait(30)
    '1 circle: box x 0.25-0.75, y 0.25-0.75'
    """

    family = "moondream"
    #: The latest Detect or Point run: the picture, the mode, the object's name and what was found.
    _located: tuple[Image.Image, str, str, list[dict[str, float]]] | None = None

    @property
    def found(self) -> list[dict[str, float]] | None:
        """What the latest Detect or Point run found (as ``detect``/``point`` return it), else None."""
        return self._located[3] if self._located is not None else None

    def _make_controls(self) -> None:
        super()._make_controls()
        self.mode.options = [*self.mode.options, ("Detect", "detect"), ("Point", "point")]

    def _reset_view(self) -> None:
        super()._reset_view()
        if self._located is not None and self._image is not None:  # the last run's marks go with its answer
            self.preview.value = thumbnail_png(self._image)
        self._located = None

    def _open_stream(self, image: Image.Image, request: _Request) -> TextStream:
        if request.mode not in _FINDING:
            return super()._open_stream(image, request)
        locate = self.model.detect if request.mode == "detect" else self.model.point  # type: ignore[attr-defined]
        name = request.question.strip()

        def produce(sink: TokenSink) -> None:
            found = locate(image, name)
            self._located = (image, request.mode, name, found)
            sink.put_token(describe_found(found, name))
            sink.set_finish_reason("stop")

        return TextStream(produce)

    def _finish(self, run: Run) -> None:
        super()._finish(run)
        if self._located is None or run.error is not None:
            return
        image, mode, name, found = self._located
        if image is self._image:  # marks on the picture they were found on, not on one uploaded since
            self.preview.value = thumbnail_png(overlay(image, found, label=name))
        if run.stats is not None and run.stats.end_time is not None:  # no tokens to count: the time it took
            self.figures.value = f"{mode} in {run.stats.end_time:.2f} s · ended {run.finished_at}"


def describe_found(found: list[dict[str, float]], name: str) -> str:
    """What ``detect`` or ``point`` found, as one line: '2 circles: box x 0.10-0.30, y ...; ...'."""
    name = name.strip()
    if not found:
        return f"No {name} found."
    parts = [
        f"box x {item['x_min']:.2f}-{item['x_max']:.2f}, y {item['y_min']:.2f}-{item['y_max']:.2f}" if "x_min" in item
        else f"point x {item['x']:.2f}, y {item['y']:.2f}"
        for item in found
    ]
    return f"{len(found)} {name}{'' if len(found) == 1 else 's'}: " + "; ".join(parts)


def thumbnail_png(picture: Image.Image) -> bytes:
    thumbnail = picture.copy()
    thumbnail.thumbnail((_PREVIEW_PIXELS, _PREVIEW_PIXELS))
    buffer = io.BytesIO()
    thumbnail.save(buffer, format="PNG")
    return buffer.getvalue()
