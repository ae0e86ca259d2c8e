"""What every model family shares: names, loading once, input checks, streaming or not."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any, ClassVar, Literal, overload

from PIL import Image

from .. import registry
from ..errors import RequestError
from ..images import load_image
from ..options import DEFAULT_MAX_NEW_TOKENS, GenerationOptions, clean_question
from ..stream import TextStream, TokenSink


class VLM(ABC):
    """A vision-language model of one family. Loading happens once, on ``load()`` or first use.

    One generation runs at a time per model: a second caller (another thread, another widget,
    a stream still running) waits until the current generation ends, then runs.
    """

    family: ClassVar[str]
    default_model: ClassVar[str]
    caption_options: ClassVar[tuple[str, ...]] = ()  # the family's own options of ``caption``

    def __init__(self, model: str | None = None, *, revision: str | None = None):
        self.entry = registry.resolve(model or self.default_model, family=self.family)
        self.name = self.entry.name
        self.revision = revision
        self._generation_lock = threading.Lock()
        self._load_lock = threading.Lock()
        self._loaded = False

    @property
    def loaded(self) -> bool:
        return self._loaded

    def load(self) -> VLM:
        """Load the checkpoint (once; later calls return at once). Returns the model."""
        with self._load_lock:
            if not self._loaded:
                self._load()
                self._loaded = True
        return self

    @overload
    def query(
        self, image: Any, question: str, *, stream: Literal[False] = False, max_new_tokens: int = ...,
        temperature: float = ..., top_p: float = ..., seed: int | None = ...,
    ) -> str: ...

    @overload
    def query(
        self, image: Any, question: str, *, stream: Literal[True], max_new_tokens: int = ...,
        temperature: float = ..., top_p: float = ..., seed: int | None = ...,
    ) -> TextStream: ...

    @overload
    def query(
        self, image: Any, question: str, *, stream: bool, max_new_tokens: int = ...,
        temperature: float = ..., top_p: float = ..., seed: int | None = ...,
    ) -> str | TextStream: ...

    def query(
        self, image: Any, question: str, *, stream: bool = False, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None,
    ) -> str | TextStream:
        """Answer ``question`` about ``image``; with ``stream=True``, a stream of text chunks."""
        options = GenerationOptions(max_new_tokens, temperature, top_p, seed)
        return self._respond(image, clean_question(question), options, stream)

    def caption_with(
        self, image: Any, *, stream: bool = False, options: Mapping[str, Any] | None = None, **generation: Any
    ) -> str | TextStream:
        """``caption`` for callers that take options by name (magics, widgets, the command line).

        ``options`` are the family's own caption options (``caption_options``); any other is refused.
        """
        options = dict(options or {})
        unknown = sorted(set(options) - set(self.caption_options))
        if unknown:
            allowed = ", ".join(self.caption_options) or "none"
            raise RequestError(
                f"{type(self).__name__} has no caption option {', '.join(unknown)}; its options: {allowed}."
            )
        caption: Callable[..., str | TextStream] = getattr(self, "caption")  # noqa: B009 (each family has its own)
        return caption(image, stream=stream, **options, **generation)

    def _respond(self, image: Any, prompt: str, options: GenerationOptions, stream: bool) -> str | TextStream:
        picture = load_image(image)
        self.load()
        if stream:
            return TextStream(partial(self._produce, picture, prompt, options), self._generation_lock)
        with self._generation_lock:
            token_ids = self._generate(picture, prompt, options, None)
        return self._decode(token_ids)

    def _produce(self, picture: Image.Image, prompt: str, options: GenerationOptions, sink: TokenSink) -> None:
        self._generate(picture, prompt, options, sink)

    @abstractmethod
    def _load(self) -> None:
        """Load weights and processor; on failure leave nothing half-loaded."""

    @abstractmethod
    def _generate(
        self, picture: Image.Image, prompt: str, options: GenerationOptions, sink: TokenSink | None
    ) -> list[int]:
        """Generate the answer's token ids; report each token to ``sink`` when streaming."""

    @abstractmethod
    def _decode(self, token_ids: Sequence[int]) -> str:
        """The whole answer text for the generated ``token_ids``."""

    def __repr__(self) -> str:
        state = "loaded" if self._loaded else "not loaded"
        return f"{type(self).__name__}({self.name!r}, {state})"
