"""What a model is asked: one value that every family's single hook, ``VLM._answer``, takes.

``caption``, ``query`` and a chat's ``ask`` all make a :class:`Request`: the picture, the
conversation so far, the question (none for a caption, whose family options say what to ask
instead), and how to generate. A family turns it into its own prompt: a chat template, Moondream's
token ids, an API body. No torch here: the remote client and the front ends use it too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from PIL import Image

from .languages import caption_prompt
from .options import GenerationOptions

Message = dict[str, Any]


@dataclass(frozen=True)
class Request:
    """One question or caption about one picture, with the conversation before it.

    ``picture`` is a PIL image (Moondream also takes its encoded images). ``question`` is None for
    a caption; ``caption`` then holds the family options given to ``caption`` (checked, by name).
    ``history`` is a chat's earlier messages (OpenAI-style, the picture in the first user turn).
    ``memory`` is a chat's kept work between turns (e.g. its KV cache), None outside a chat: the
    family reads and replaces what it holds.
    """

    picture: Any
    question: str | None = None
    caption: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    options: GenerationOptions = field(default_factory=GenerationOptions)
    history: tuple[Message, ...] = ()
    memory: dict[str, Any] | None = None

    def text(self, default_caption: str) -> str:
        """What is asked in words: the question; for a caption, its ``prompt``, else the caption
        prompt of its ``language``, else ``default_caption`` (the family's caption prompt)."""
        if self.question is not None:
            return self.question
        if "prompt" in self.caption:
            return self.caption["prompt"]
        if "language" in self.caption:
            return caption_prompt(self.caption["language"])
        return default_caption

    def template_messages(self, default_caption: str) -> list[Message]:
        """The conversation with this request's text, as chat templates take it: pictures become
        placeholders (``{"type": "image"}``), so a template never sees the picture itself."""
        messages = [copy_message(message) for message in self.history]
        messages.append(user_message(None if self.history else self.picture, self.text(default_caption)))
        for message in messages:
            if isinstance(message["content"], list):
                message["content"] = [
                    {"type": "image"} if part["type"] == "image" else dict(part) for part in message["content"]
                ]
        return messages

    def api_messages(self, default_caption: str) -> list[Message]:
        """The conversation with this request's text, pictures included (for servers)."""
        return [*self.history, user_message(None if self.history else self.picture, self.text(default_caption))]


def user_message(picture: Image.Image | None, text: str) -> Message:
    """A user turn: the picture (when given) then ``text``."""
    content: list[dict[str, Any]] = [{"type": "image", "image": picture}] if picture is not None else []
    content.append({"type": "text", "text": text})
    return {"role": "user", "content": content}


def copy_message(message: Message) -> Message:
    """A copy of ``message`` whose content list and parts can be changed without touching it."""
    content = message["content"]
    if isinstance(content, list):
        content = [dict(part) for part in content]
    return {"role": message["role"], "content": content}
