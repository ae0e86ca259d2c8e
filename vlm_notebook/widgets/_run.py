"""One generation started from a widget, on a worker thread of its own.

The kernel's thread only starts a run; everything slow (loading the model, decoding the
image, generating) happens on the run's thread, so Run returns at once and Stop, which the
kernel handles between messages, can reach it. Chunks go through a Coalescer, whose thread is
the Output's only writer while the run lasts.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import ipywidgets as widgets

from ..errors import VLMError
from ..stream import StreamStats, TextStream, wait_for
from ._coalesce import Coalescer

#: What the figures line's parts mean (its tooltip).
FIGURES_HELP = (
    "TTFT: seconds from Run to the first token (reading the picture and the prompt). "
    "tokens/s: the decoding rate after the first token. image tokens: how many tokens the picture became; "
    "(reused): the picture's work was done before. Then where it ran, and how and when it ended."
)
WAIT_TICK = 0.5  # seconds between updates of the figures line while the first token is awaited


class Run:
    """A generation: ``open_stream`` runs on the run's thread, ``show`` on the coalescer's, ``finish`` last.

    ``finish`` runs holding ``start_lock``, the lock under which the widget starts runs, and the
    run stops ``running`` before it lets go: a start that holds the lock sees either this run
    going or the widget as ``finish`` left it (Send and Run enabled), never a run that is over
    but still refuses the next."""

    def __init__(
        self,
        open_stream: Callable[[], TextStream],
        show: Callable[[Run, str], None],
        finish: Callable[[Run], None],
        max_rate: float,
        start_lock: threading.Lock,
        waiting: Callable[[Run, float], None] | None = None,
    ) -> None:
        self._open_stream = open_stream
        self._show = show
        self._finish = finish
        self._start_lock = start_lock
        self._done = threading.Event()  # set when finish has run
        self._max_rate = max_rate
        self._waiting = waiting
        self._stop = threading.Event()
        self.stream: TextStream | None = None
        self.error: Exception | None = None
        self.finished_at: str | None = None  # wall-clock time, for people comparing runs
        self._started = time.perf_counter()
        self._shown_or_done = False  # once True, ``waiting`` is never called again
        self._order = threading.Lock()  # between ``waiting`` and the first ``show`` or ``finish``
        self._thread = threading.Thread(target=self._work, name="vlm-notebook-widget", daemon=True)

    def start(self) -> None:
        self._started = time.perf_counter()
        self._thread.start()
        if self._waiting is not None:
            threading.Thread(target=self._tick, name="vlm-notebook-widget-wait", daemon=True).start()

    def _tick(self) -> None:
        """Until the first text shows or the run ends: ``waiting(run, seconds so far)`` twice a second."""
        while not self._done.wait(WAIT_TICK):
            with self._order:
                if self._shown_or_done:
                    return
                assert self._waiting is not None
                self._waiting(self, time.perf_counter() - self._started)

    @property
    def running(self) -> bool:
        return self._thread.ident is not None and not self._done.is_set()  # started and not done

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    @property
    def text(self) -> str:
        return self.stream.text if self.stream is not None else ""

    @property
    def stats(self) -> StreamStats | None:
        return self.stream.stats if self.stream is not None else None

    def stop(self) -> None:
        """Ask the run to end: before it starts generating, or at the next token."""
        self._stop.set()
        stream = self.stream  # read after setting the flag: _generate checks it after assigning
        if stream is not None:
            stream.cancel()

    def wait(self, timeout: float | None = None) -> str:
        """Block until the run ends; return its text or raise its error."""
        if not wait_for(self._done, timeout):
            raise TimeoutError(f"generation still running after {timeout} s")
        if self.error is not None:
            raise self.error
        return self.text

    def _work(self) -> None:
        coalescer = Coalescer(self._show_text, self._max_rate)
        try:
            self._generate(coalescer)
        except Exception as error:  # shown by the widget, raised again by wait(); never printed
            self.error = error
        finally:
            coalescer.close()
            self.error = self.error or coalescer.error
            self.finished_at = time.strftime("%H:%M:%S")
            with self._order:
                self._shown_or_done = True
            with self._start_lock:
                self._finish(self)
                self._done.set()

    def _show_text(self, text: str) -> None:
        if not self._shown_or_done:
            with self._order:
                self._shown_or_done = True
        self._show(self, text)

    def _generate(self, coalescer: Coalescer) -> None:
        if self._stop.is_set():
            return
        self.stream = stream = self._open_stream()
        if self._stop.is_set():  # Stop came while the model was loading
            stream.cancel()
        for chunk in stream:
            coalescer.add(chunk)


class RunHolder:
    """What a widget that starts runs (:class:`Run`) offers from Python about the latest one."""

    # A class default, because ipywidgets' __del__ calls close() even when __init__ failed early.
    _run: Run | None = None

    @property
    def running(self) -> bool:
        return self._run is not None and self._run.running

    @property
    def text(self) -> str:
        """The latest run's text (a caption, an answer), as far as it has been generated."""
        return self._run.text if self._run is not None else ""

    @property
    def stats(self) -> StreamStats | None:
        """The latest run's ``StreamStats`` (None before the first run or while the model loads)."""
        return self._run.stats if self._run is not None else None

    def stop(self) -> None:
        """Stop the latest run within a token, as clicking Stop does."""
        if self._run is not None:
            self._run.stop()

    def wait(self, timeout: float | None = None) -> str:
        """Block until the latest run ends; return its text, or raise its error (TimeoutError if still going)."""
        return self._run.wait(timeout) if self._run is not None else ""


def figures_line(run: Run) -> str:
    """One line: time to first token, tokens, tokens/s, image tokens, and how and when it ended."""
    stats = run.stats
    if stats is None:
        return "" if run.finished_at else "loading the model…"
    line = f"{stats.summary()} · {stats.image_tokens} image tokens"
    if stats.device is not None:
        line += f" · {stats.device}, {stats.dtype}"
    if stats.image_cache == "hit":
        line += " (reused)"
    if run.finished_at is None or stats.end_time is None:
        return f"{line} · running"
    return f"{line} · ended {run.finished_at} ({stats.finish_reason}, {stats.end_time:.2f} s)"


def figures_box() -> Any:
    """Where the figures line shows: an HTML box, which wraps in a narrow pane (a Label cuts it off).
    The lines hold numbers and fixed words only, never markup."""
    return widgets.HTML(value="", tooltip=FIGURES_HELP, layout=widgets.Layout(width="100%"))


def waiting_line(loaded: bool, stats: StreamStats | None, seconds: float) -> str:
    """What the figures line says before the first token: what the model is doing, and for how long."""
    if not loaded:
        phase = "loading the model"
    elif stats is None or not stats.prompt_tokens:
        phase = "preparing the picture"
    else:
        phase = f"reading the picture and the prompt ({stats.prompt_tokens} tokens)"
    return f"{phase}… {seconds:.0f} s"


def short_message(error: Exception) -> str:
    """What a person reads instead of a traceback: our errors speak for themselves, others get named."""
    lines = str(error).strip().splitlines()
    first = lines[0] if lines else ""
    text = first if isinstance(error, VLMError) else f"The model failed: {type(error).__name__}: {first}"
    return text if len(text) <= 300 else text[:299] + "…"
