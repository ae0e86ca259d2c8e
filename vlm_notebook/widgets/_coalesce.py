"""Many small chunks in, few whole-text updates out: what keeps a streaming Output widget cheap.

Every assignment to ``Output.outputs`` re-sends the whole tuple over the comm, so an update per
token costs O(n^2) bytes and floods the front end with messages. A :class:`Coalescer` joins the
chunks a producer adds and hands the text so far to ``show`` on a thread of its own:

- at most ``max_rate`` calls a second, however fast chunks come;
- text waiting to be shown is shown one interval later at most, without waiting for another chunk;
- after ``close()`` the last call carries the whole text (no call at all if nothing was added).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

#: Front-end updates per second while text streams in: smooth to read, cheap to send.
DEFAULT_MAX_RATE = 20.0


def set_output_text(output: Any, text: str) -> None:
    """Show ``text`` as the one stream entry of an ``ipywidgets.Output``.

    Assigning ``outputs`` is safe from any thread, unlike ``with output:`` or ``clear_output()``.
    """
    output.outputs = ({"output_type": "stream", "name": "stdout", "text": text},)


class Coalescer:
    """Collects chunks from one producer and shows the text so far at a bounded rate.

    ``show`` runs only on the coalescer's thread, so whatever it writes has a single writer
    while the coalescer is open. An exception from ``show`` stops further calls and is kept in
    ``error``: a worker thread must not print (its output would land in some other cell).

    >>> shown: list[str] = []
    >>> coalescer = Coalescer(shown.append)
    >>> for chunk in ["A", " red", " circle."]:
    ...     coalescer.add(chunk)
    >>> coalescer.close()
    >>> shown[-1]
    'A red circle.'
    """

    def __init__(self, show: Callable[[str], None], max_rate: float = DEFAULT_MAX_RATE) -> None:
        if not max_rate > 0:
            raise ValueError(f"max_rate must be a positive number of updates per second, got {max_rate}.")
        self._show = show
        self._interval = 1.0 / max_rate
        self._parts: list[str] = []
        self._pending = False
        self._closed = False
        self._changed = threading.Condition()
        self.updates = 0
        self.error: Exception | None = None
        self._thread = threading.Thread(target=self._flush_loop, name="vlm-notebook-coalesce", daemon=True)
        self._thread.start()

    @property
    def text(self) -> str:
        """Everything added so far, shown or not."""
        with self._changed:
            return "".join(self._parts)

    def add(self, chunk: str) -> None:
        """Queue ``chunk`` for showing; returns at once."""
        with self._changed:
            if self._closed:
                raise RuntimeError("Coalescer.add() after close()")
            self._parts.append(chunk)
            self._pending = True
            self._changed.notify()

    def close(self, timeout: float | None = None) -> None:
        """Show whatever is still pending, then end the thread (waits for it up to ``timeout``)."""
        with self._changed:
            self._closed = True
            self._changed.notify()
        self._thread.join(timeout)

    def _flush_loop(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._pending or self._closed)
                text, pending, closed = self._take()
            if pending:
                self._show_safely(text)
            if closed:
                return
            # Not interruptible by close(): the final update keeps the same spacing as the others.
            time.sleep(self._interval)

    def _take(self) -> tuple[str, bool, bool]:
        text = "".join(self._parts)
        self._parts = [text]  # join each chunk once, not once per update
        pending, self._pending = self._pending, False
        return text, pending, self._closed

    def _show_safely(self, text: str) -> None:
        if self.error is not None:
            return
        try:
            self._show(text)
        except Exception as error:
            self.error = error
        else:
            self.updates += 1
