"""The stream object every model returns with ``stream=True``, and the worker thread behind it.

Contract:

- Generation runs on a worker thread; creating a stream returns at once.
- Iterating yields text chunks as tokens are generated: one chunk per token that completes
  at least one character, never part of a UTF-8 character, never an empty string.
- An exception raised by the producer is re-raised, as the same object, to the consumer, and
  again on every later ``next()`` (a stream that failed never looks finished).
- Several threads may iterate one stream: each chunk goes to one of them, and every one of them
  ends (StopIteration, or the producer's exception) when the generation does: none waits for ever.
- ``cancel()`` asks the producer to stop; generation ends at the next token. A KeyboardInterrupt
  while iterating or in ``wait()`` cancels the worker before it propagates. Leaving a ``with``
  block, exhausting the stream, or dropping it cancels and ends the worker thread.
- One generation at a time per model: streams given the same lock wait their turn, in the worker,
  and their time to first token includes that wait (it is what the user waits for).
"""

from __future__ import annotations

import itertools
import queue
import statistics
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from types import TracebackType
from typing import Any

_END = object()
_POLL_SECONDS = 0.1


def wait_for(event: threading.Event, timeout: float | None = None) -> bool:
    """``event.wait(timeout)``, a short wait at a time, so that Ctrl-C reaches a waiting main
    thread even where the signal landed on another thread. Threads here are waited for this way,
    not with ``Thread.join``: Python 3.11 takes a thread whose join was interrupted for ended."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while not event.is_set():
        left = _POLL_SECONDS if deadline is None else min(_POLL_SECONDS, deadline - time.monotonic())
        if left <= 0:
            return False
        event.wait(left)
    return True


class GenerationCancelled(Exception):
    """Raised inside a producer to abandon work (for example mid-prefill) after ``cancel()``."""


@dataclass
class StreamStats:
    """Figures for one generation; times are seconds since the request was made."""

    prompt_tokens: int = 0
    image_tokens: int = 0
    token_times: list[float] = field(default_factory=list)
    first_text_time: float | None = None
    end_time: float | None = None
    finish_reason: str | None = None  # "stop", "length", "cancelled" or "error"
    extra: dict[str, Any] = field(default_factory=dict)  # family-specific figures
    tiles: int | None = None  # image tiles the vision encoder saw (families that tile pictures)
    image_cache: str | None = None  # "hit": the image's work was reused; "miss": done now
    vision_seconds: float | None = None  # vision encoder time of this request (0 on a hit)
    prefill_seconds: float | None = None  # language-model prefill time of this request
    device: str | None = None  # where the model ran ("cpu", "cuda:0"); None for a remote model
    dtype: str | None = None  # its number format ("float32", "bfloat16", "int8")

    @property
    def decode_seconds(self) -> float | None:
        """Time from the first token to the last."""
        times = self.token_times
        return times[-1] - times[0] if times else None

    @property
    def tokens(self) -> int:
        """Generated tokens, counted from token ids (special tokens included)."""
        return len(self.token_times)

    @property
    def time_to_first_token(self) -> float | None:
        return self.token_times[0] if self.token_times else None

    @property
    def time_to_first_text(self) -> float | None:
        return self.first_text_time

    @property
    def inter_token_latencies(self) -> list[float]:
        times = self.token_times
        return [later - earlier for earlier, later in itertools.pairwise(times)]

    @property
    def median_inter_token_latency(self) -> float | None:
        gaps = self.inter_token_latencies
        return statistics.median(gaps) if gaps else None

    @property
    def tokens_per_second(self) -> float | None:
        """Output tokens over the end-to-end time."""
        if not self.end_time or not self.tokens:
            return None
        return self.tokens / self.end_time

    @property
    def decode_tokens_per_second(self) -> float | None:
        """The decoding rate: tokens after the first over the time since the first (so far, while it
        runs). What Ollama and llama.cpp report; the wait before the first token is TTFT's."""
        decode = self.decode_seconds
        return (self.tokens - 1) / decode if decode else None

    def summary(self) -> str:
        """One line a person reads: time to first token, tokens, the decoding rate (so far, while it runs)."""
        ttft = self.time_to_first_token
        rate = self.decode_tokens_per_second
        first = f"{ttft:.2f} s" if ttft is not None else "-"
        speed = f"{rate:.1f} tokens/s" if rate is not None else "- tokens/s"
        return f"TTFT {first} · {self.tokens} tokens · {speed}"

    def as_dict(self) -> dict[str, Any]:
        record = asdict(self)
        record.update(
            tokens=self.tokens,
            time_to_first_token=self.time_to_first_token,
            tokens_per_second=self.tokens_per_second,
            decode_seconds=self.decode_seconds,
        )
        return record


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


class TokenSink:
    """What a producer sees: where it reports the prompt, each token, and whether to stop."""

    def __init__(self, stats: StreamStats, chunks: queue.Queue[object], cancel: threading.Event):
        self._stats = stats
        self._chunks = chunks
        self._cancel = cancel
        self._started = time.perf_counter()
        self._failure: _Failure | None = None
        self.text_parts: list[str] = []

    def elapsed(self) -> float:
        return time.perf_counter() - self._started

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def raise_if_cancelled(self) -> None:
        if self._cancel.is_set():
            raise GenerationCancelled()

    def set_prompt(self, prompt_tokens: int, image_tokens: int) -> None:
        self._stats.prompt_tokens = prompt_tokens
        self._stats.image_tokens = image_tokens

    def set_image_work(
        self, *, cache_hit: bool, tiles: int | None, vision_seconds: float, prefill_seconds: float
    ) -> None:
        """Record whether the image's work was reused, its tiles, and the time spent on it now."""
        self._stats.image_cache = "hit" if cache_hit else "miss"
        self._stats.tiles = tiles
        self._stats.vision_seconds = vision_seconds
        self._stats.prefill_seconds = prefill_seconds

    def add_prefill_time(self, seconds: float) -> None:
        """Add prefill time measured after ``set_image_work`` (the question's own words)."""
        self._stats.prefill_seconds = (self._stats.prefill_seconds or 0.0) + seconds

    def put_token(self, text: str | None) -> None:
        """Record one generated token and the text it completes ("" or None when it completes none)."""
        now = self.elapsed()
        self._stats.token_times.append(now)
        if text:
            if self._stats.first_text_time is None:
                self._stats.first_text_time = now
            self.text_parts.append(text)
            self._chunks.put(text)

    def set_extra(self, name: str, value: Any) -> None:
        """Record a family-specific figure in ``stats.extra`` (a conversation's reused tokens, say)."""
        self._stats.extra[name] = value

    def set_finish_reason(self, reason: str) -> None:
        self._stats.finish_reason = reason

    def _fail(self, error: BaseException) -> None:
        self._stats.finish_reason = "error"
        self._failure = _Failure(error)  # sent by _end, in place of _END

    def _end(self) -> None:
        stats = self._stats
        if self.cancelled and stats.finish_reason != "error":
            stats.finish_reason = "cancelled"
        elif stats.finish_reason is None:
            stats.finish_reason = "stop"
        stats.end_time = self.elapsed()
        # One item ends the queue, never two: a consumer that puts it back for another thread must
        # not leave a different one ahead of it (an _END after the failure would hide the failure).
        self._chunks.put(self._failure or _END)


Producer = Callable[[TokenSink], None]


class TextStream(Iterator[str]):
    """Text chunks of one generation, as they are made. See the module docstring for the contract."""

    def __init__(self, produce: Producer, lock: threading.Lock | None = None):
        self.stats = StreamStats()
        self._cancel = threading.Event()
        self._chunks: queue.Queue[object] = queue.Queue()
        self._sink = TokenSink(self.stats, self._chunks, self._cancel)
        self._ended: object | None = None  # _END or a _Failure, once a consumer met it (or close() ran)
        self._error: list[BaseException] = []
        self._done = threading.Event()  # the worker's end
        threading.Thread(
            target=_work,
            args=(produce, self._sink, lock or threading.Lock(), self._error, self._done),
            name="vlm-notebook-generate",
            daemon=True,
        ).start()
        weakref.finalize(self, self._cancel.set)

    @property
    def text(self) -> str:
        """All the text generated so far (the worker's view; iteration may lag behind)."""
        return "".join(self._sink.text_parts)

    @property
    def running(self) -> bool:
        return not self._done.is_set()

    def cancel(self) -> None:
        """Ask the worker to stop at the next token; returns at once."""
        self._cancel.set()

    def close(self) -> None:
        """Cancel and wait for the worker thread to end."""
        self.cancel()
        wait_for(self._done)
        if self._ended is None:
            self._ended = _END  # iteration stops here, whatever chunks are left unread

    def wait(self, timeout: float | None = None) -> str:
        """Block until generation ends; return the whole text or raise the worker's exception."""
        try:
            ended = wait_for(self._done, timeout)
        except BaseException:  # KeyboardInterrupt while waiting: stop the worker first
            self.close()
            raise
        if not ended:
            raise TimeoutError(f"generation still running after {timeout} s")
        if self._error:
            raise self._error[0]
        return self.text

    def __iter__(self) -> TextStream:
        return self

    def __next__(self) -> str:
        ended = self._ended
        if ended is None:
            try:
                item = self._next_item()
            except BaseException:  # KeyboardInterrupt while waiting: stop the worker first
                self.close()
                raise
            if isinstance(item, str):
                return item
            # The end, or the producer's failure: put back for another thread waiting on the queue
            # (it would wait for ever), and kept, so every later call meets it too.
            self._chunks.put(item)
            wait_for(self._done)
            self._ended = ended = item
        if isinstance(ended, _Failure):
            raise ended.error
        raise StopIteration

    def _next_item(self) -> object:
        while True:
            try:
                return self._chunks.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                continue

    def __enter__(self) -> TextStream:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.running else (self.stats.finish_reason or "finished")
        return f"<TextStream {state}: {self.stats.tokens} tokens>"


def _work(
    produce: Producer, sink: TokenSink, lock: threading.Lock, errors: list[BaseException], done: threading.Event
) -> None:
    """The worker thread: wait for the model, produce, and always end the queue, then set ``done``."""
    try:
        if _acquire_unless_cancelled(lock, sink):
            try:
                produce(sink)
            finally:
                lock.release()
    except GenerationCancelled:
        pass
    except BaseException as error:  # handed to the consumer, never lost
        errors.append(error)
        sink._fail(error)
    finally:
        sink._end()
        done.set()


def _acquire_unless_cancelled(lock: threading.Lock, sink: TokenSink) -> bool:
    while not sink.cancelled:
        if lock.acquire(timeout=_POLL_SECONDS):
            if not sink.cancelled:
                return True
            lock.release()  # cancelled while waiting for the model: never start
    return False
