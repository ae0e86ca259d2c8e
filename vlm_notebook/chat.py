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
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Literal, overload

from PIL import Image

from .errors import RequestError
from .images import load_image
from .options import DEFAULT_MAX_NEW_TOKENS, GenerationOptions, clean_question
from .stream import TextStream, TokenSink

if TYPE_CHECKING:
    from .models.base import VLM


@dataclass
class Turn:
    """What a model needs to answer one turn: the picture, the history before it and the question.

    ``memory`` is the family's own work kept between turns of one chat (e.g. its KV cache); a
    family reads and replaces it, and it is dropped with ``Chat.reset()``.
    """

    picture: Image.Image
    history: list[dict[str, Any]]
    question: str
    options: GenerationOptions
    memory: dict[str, Any] = field(default_factory=dict)

    def template_messages(self) -> list[dict[str, Any]]:
        """The conversation with this turn's question, as chat templates take it (a placeholder image)."""
        messages = [_copy_message(message) for message in self.history]
        messages.append(_user_message(None if self.history else self.picture, self.question))
        for message in messages:  # a template may only see the placeholder, never the picture
            if isinstance(message["content"], list):
                message["content"] = [
                    {"type": "image"} if part["type"] == "image" else dict(part) for part in message["content"]
                ]
        return messages

    def api_messages(self) -> list[dict[str, Any]]:
        """The conversation with this turn's question, pictures included (for servers)."""
        return [*self.history, _user_message(None if self.history else self.picture, self.question)]


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
            return [_copy_message(message) for message in self._messages]

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
        self.model._check_request(self._picture, question)
        with self._lock:
            self._refuse_while_running("ask")
            turn = Turn(self._picture, [_copy_message(m) for m in self._messages], question, options, self._memory)
            answer = self.model._chat_stream(partial(self._produce, turn, self._generation))
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
        self.model._check_request(picture, "")  # the family's limits on pictures, before any question
        self._picture = picture
        self._messages: list[dict[str, Any]] = []
        self._memory: dict[str, Any] = {}
        self._generation = object()  # a turn of an earlier conversation must not join this one

    def _produce(self, turn: Turn, generation: object, sink: TokenSink) -> None:
        self.model._answer_turn(turn, sink)
        if sink.cancelled:
            return
        with self._lock:
            if generation is self._generation:
                self._messages.extend(turn.api_messages()[len(turn.history):])
                self._messages.append({"role": "assistant", "content": "".join(sink.text_parts)})

    def _refuse_while_running(self, action: str) -> None:
        if self._running is not None and self._running.running:
            raise RequestError(
                f"Cannot {action} while the previous question is still being answered: read its stream to the "
                "end, or cancel it (stream.cancel()), first."
            )


def record(sink: TokenSink, name: str, value: Any) -> None:
    """Add a family-specific figure to the stream's stats (``stats.extra``)."""
    sink.set_extra(name, value)


def _user_message(picture: Image.Image | None, question: str) -> dict[str, Any]:
    content: list[dict[str, Any]] = [{"type": "image", "image": picture}] if picture is not None else []
    content.append({"type": "text", "text": question})
    return {"role": "user", "content": content}


def _copy_message(message: dict[str, Any]) -> dict[str, Any]:
    content = message["content"]
    if isinstance(content, list):
        content = [dict(part) for part in content]
    return {"role": message["role"], "content": content}
