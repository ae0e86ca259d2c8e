"""Conversations about one picture: ``chat = model.chat(image)``, then ``chat.ask(question)`` turn by turn.

>>> chat = SmolVLM("shapes-smolvlm").chat(picture)
>>> chat.ask("What shape is it?")
'A circle.'
>>> chat.ask("What colour is the shape?")      # asked with the whole conversation so far
'Red.'
>>> chat.messages                              # OpenAI-style turns; the picture in the first one
[{'role': 'user', 'content': [{'type': 'image', 'image': <PIL.Image...>}, {'type': 'text', ...}]}, ...]

What each family does with the history:

- SmolVLM and Qwen2-VL render the whole conversation with the checkpoint's chat template. The
  chat keeps the KV cache of what it has already run through the model; a new turn prefills only
  the tokens past the longest prefix it shares with the new prompt: its own question and the end of
  the previous answer (SmolVLM's decoding loop keeps the answer's keys outside that cache, so there
  the previous answer is prefilled again). Greedy answers equal those of the same history asked
  cold. ``stream.stats.extra`` says so: ``conversation_cache`` ("hit" or "miss"), ``reused_tokens``
  and ``prefilled_tokens``. A conversation that no longer fits the model's context is refused,
  never truncated: ``chat.reset()`` starts over.
- Remote models get the whole conversation (every message, the picture in the first) on each ask.
- Moondream has no multi-turn prompt format: each question is answered on the picture alone, and
  the history is kept for display only (``chat.remembers`` is False).

A turn is added to ``messages`` only when its answer is complete: a cancelled or failed turn leaves
the history as it was, and the next ``ask`` works. One turn runs at a time per chat.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from functools import partial
from typing import TYPE_CHECKING, Any, Literal, overload

from PIL import Image

from .errors import RequestError
from .images import load_image
from .options import DEFAULT_MAX_NEW_TOKENS, GenerationOptions, clean_question
from .request import Request, copy_message
from .stream import TextStream, TokenSink

if TYPE_CHECKING:
    from .models.base import VLM


class Chat:
    """A conversation about one picture with one model. See the module docstring."""

    def __init__(self, model: VLM, image: Any):
        self.model = model
        self._lock = threading.Lock()
        self._running: TextStream | None = None
        self._start(load_image(image))

    @property
    def picture(self) -> Image.Image:
        """The picture the conversation is about."""
        return self._picture

    @property
    def remembers(self) -> bool:
        """Whether the model sees the earlier turns (False: each question is answered on the picture alone)."""
        return self.model.multi_turn

    @property
    def messages(self) -> list[dict[str, Any]]:
        """The history: OpenAI-style ``{"role", "content"}`` dicts, the picture in the first user turn (a copy)."""
        with self._lock:
            return [copy_message(message) for message in self._messages]

    def reset(self, image: Any = None) -> None:
        """Forget the conversation (and its kept work); with ``image``, talk about that picture from now on."""
        picture = load_image(image) if image is not None else self._picture
        with self._lock:
            self._refuse_while_running("reset")
            self._start(picture)

    @overload
    def ask(
        self, question: str, *, stream: Literal[False] = False, max_new_tokens: int = ...,
        temperature: float = ..., top_p: float = ..., seed: int | None = ...,
    ) -> str: ...

    @overload
    def ask(
        self, question: str, *, stream: Literal[True], max_new_tokens: int = ...,
        temperature: float = ..., top_p: float = ..., seed: int | None = ...,
    ) -> TextStream: ...

    @overload
    def ask(
        self, question: str, *, stream: bool, max_new_tokens: int = ...,
        temperature: float = ..., top_p: float = ..., seed: int | None = ...,
    ) -> str | TextStream: ...

    def ask(
        self, question: str, *, stream: bool = False, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None,
    ) -> str | TextStream:
        """Ask the next question; the answer as text, or with ``stream=True`` a stream of text chunks
        (the same contract as ``query``). The turn joins ``messages`` once its answer is complete."""
        options = GenerationOptions(max_new_tokens, temperature, top_p, seed)
        question = clean_question(question)
        self.model.load()
        with self._lock:
            self._refuse_while_running("ask")
            history = tuple(copy_message(message) for message in self._messages)
            request = Request(self._picture, question, options=options, history=history, memory=self._memory)
            answer = self.model._stream(request, then=partial(self._keep, request, self._generation))
            self._running = answer
        if stream:
            return answer
        with answer:
            return "".join(answer)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.messages)

    def __len__(self) -> int:
        """Turns so far (a question and its answer count as two)."""
        return len(self._messages)

    def __repr__(self) -> str:
        return f"<Chat with {self.model.name!r}: {len(self._messages)} messages>"

    def _start(self, picture: Image.Image) -> None:
        self.model.load()
        self.model._check_request(Request(picture))  # the family's limits on pictures, before any question
        self._picture = picture
        self._messages: list[dict[str, Any]] = []
        self._memory: dict[str, Any] = {}
        self._generation = object()  # a turn of an earlier conversation must not join this one

    def _keep(self, request: Request, generation: object, sink: TokenSink) -> None:
        """Add a completed turn to the history (unless the conversation was reset meanwhile)."""
        with self._lock:
            if generation is self._generation:
                self._messages.extend(request.api_messages(self.model.default_prompt)[len(request.history):])
                self._messages.append({"role": "assistant", "content": "".join(sink.text_parts)})

    def _refuse_while_running(self, action: str) -> None:
        if self._running is not None and self._running.running:
            raise RequestError(
                f"Cannot {action} while the previous question is still being answered: read its stream to the "
                "end, or cancel it (stream.cancel()), first."
            )
