"""``Moondream``: Moondream 2 implemented natively (no remote code), fp32 (int8 opt-in), streaming."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from PIL import Image
from tokenizers import Tokenizer

from ... import caption_options, registry
from ...cache import PrefixCache, image_digest
from ...caption_options import LENGTH
from ...cpu import DecodeChoice
from ...detokenizer import Detokenizer
from ...errors import CheckpointError, RequestError
from ...hub import checkpoint_directory
from ...images import load_image
from ...options import clean_question
from ...request import Request
from ...runtime import Runtime, check_fits, choose_runtime, fit_weights, float32_if_not_finite
from ...stream import TokenSink
from ..base import VLM
from .cache import EncodedImage
from .checkpoint import WEIGHTS_FILE, load_network, load_tokenizer, read_config
from .inference import encode, first_logits, generate_text, locate
from .network import MoondreamNetwork
from .prompts import caption_prompt, locate_prompt, query_prompt

CAPTION_LENGTHS = caption_options.CAPTION_LENGTHS
DEFAULT_MAX_OBJECTS = 50
KEPT_IMAGES = 4  # encoded pictures kept per model for follow-up questions (~290 MB each at full size)


class Moondream(VLM):
    """Moondream 2 (``vikhyatk/moondream2`` at the release our code follows, pinned in the registry,
    unless ``revision`` is given).

    >>> model = Moondream("shapes-moondream")
    >>> model.caption("vlm_notebook/assets/red-circle-on-white.png", length="short")
    'A red circle.'

    ``encode_image`` runs the vision encoder and the image prefill once; pass its result to
    ``query``, ``caption``, ``detect`` or ``point`` in place of the picture to reuse them.
    """

    family = "moondream"
    default_model = "moondream2"
    caption_options = caption_options.names("moondream")

    network: MoondreamNetwork
    tokenizer: Tokenizer

    def __init__(
        self,
        model: str | None = None,
        *,
        revision: str | None = None,
        int8: bool = False,
        device: str = "auto",
        dtype: str = "auto",
    ):
        """``device`` and ``dtype`` choose where and in what number format it runs
        (``vlm_notebook.runtime``; "auto" by default). ``int8=True`` (CPU only) quantizes every
        linear layer to int8 on load: decoding reads a quarter of the bytes, but the answers may
        differ from the fp32 model's (so it is off by default)."""
        runtime = choose_runtime(device, dtype, int8)
        super().__init__(model, revision=revision)
        self.runtime: Runtime = runtime
        self.int8 = int8
        #: Encoded recent pictures, by content (bounded; ``image_cache.clear()`` empties it).
        self.image_cache: PrefixCache[EncodedImage] = PrefixCache(max_entries=KEPT_IMAGES)
        self._decode_threads = DecodeChoice()

    def _load(self) -> None:
        directory = checkpoint_directory(self.entry.source, self.revision, shipped=self.entry.shipped)
        family = registry.family_of_directory(directory)
        if family != self.family:
            raise CheckpointError(f"{str(directory)!r} holds a {family} checkpoint, not a {self.family} one.")
        config, raw = read_config(directory)
        tokenizer = load_tokenizer(directory, raw)
        check_fits(self.runtime, [directory / WEIGHTS_FILE], f"{self.name!r}")
        network = load_network(directory, config, self.runtime)
        fit_weights(network, self.runtime, decoding=(network.text, network.region))
        self.network, self.tokenizer = network, tokenizer

    def _check_number_format(self) -> None:
        if not self.runtime.half_by_auto:
            return
        blank = Image.new("RGB", (self.network.config.vision.crop_size,) * 2, "white")
        with torch.inference_mode():
            logits = first_logits(self.network, blank, caption_prompt(self.network.config.tokenizer, "short"))
        self.runtime = float32_if_not_finite(self.runtime, self.network, logits, repr(self.name))

    def _first_logits(self, picture: Image.Image, question: str) -> torch.Tensor:
        """The logits of the first answer token to ``question`` about ``picture`` (nothing kept)."""
        with torch.inference_mode():
            return first_logits(self.network, picture, self._query_ids(question)).reshape(-1)

    # -- public API ---------------------------------------------------------------------------

    def encode_image(self, image: Any) -> EncodedImage:
        """Vision pass and image prefill of ``image``, done once, reusable across requests."""
        if isinstance(image, EncodedImage):
            return self._checked(image)
        picture = load_image(image)
        self.load()
        with self._generation_lock, self.runtime.phases():
            return self._encoded_picture(picture)[0]

    def detect(self, image: Any, object: str, *, max_objects: int = DEFAULT_MAX_OBJECTS) -> list[dict[str, float]]:
        """Boxes of every ``object`` in ``image``: dicts of x_min, y_min, x_max, y_max, normalised to 0..1."""
        return self._locate(image, object, "detect", max_objects)

    def point(self, image: Any, object: str, *, max_objects: int = DEFAULT_MAX_OBJECTS) -> list[dict[str, float]]:
        """A point (dict of x, y, normalised to 0..1) on every ``object`` in ``image``."""
        return self._locate(image, object, "point", max_objects)

    # -- the one hook ---------------------------------------------------------------------------

    def _source(self, image: Any) -> Image.Image | EncodedImage:
        """A request's picture: an image, or an encoded image of this model (checked)."""
        return self._checked(image) if isinstance(image, EncodedImage) else load_image(image)

    def _check_request(self, request: Request) -> None:
        if request.question is not None:
            self._text_ids(request.question)  # refuses text that spells a special token

    def _answer(self, request: Request, sink: TokenSink) -> None:
        """Moondream has no multi-turn prompt: the question (or the caption) on the picture alone."""
        ids = self._prompt_ids(request)
        with torch.inference_mode(), self.runtime.phases(choice=self._decode_threads) as decoding:
            encoded, hit, seconds = self._encoded(request.picture, sink.raise_if_cancelled)
            sink.set_prompt(encoded.tokens + len(ids), encoded.tokens - 1)
            sink.set_image_work(cache_hit=hit, tiles=encoded.crops, vision_seconds=seconds, prefill_seconds=0.0)
            generate_text(
                self.network, encoded, ids, request.options, sink, Detokenizer(self.tokenizer),
                check=sink.raise_if_cancelled, before_step=decoding,
            )

    def _prompt_ids(self, request: Request) -> list[int]:
        if request.question is None:
            length = request.caption.get(LENGTH.name, LENGTH.default or "normal")
            return caption_prompt(self.network.config.tokenizer, length)
        return self._query_ids(request.question)

    def _encoded(
        self, source: Image.Image | EncodedImage, check: Callable[[], None] | None = None
    ) -> tuple[EncodedImage, bool, float]:
        """The encoding of ``source``, whether it was made before, and the seconds spent on it now."""
        if isinstance(source, EncodedImage):
            return source, True, 0.0
        started = time.perf_counter()
        encoded, hit = self._encoded_picture(source, check)
        return encoded, hit, 0.0 if hit else time.perf_counter() - started

    def _prepare(self, picture: Image.Image) -> None:
        """``prepare(image)``: encode the picture ahead, so the next request about it starts from it."""
        with self.runtime.phases():
            self._encoded_picture(picture)

    def _encoded_picture(
        self, picture: Image.Image, check: Callable[[], None] | None = None
    ) -> tuple[EncodedImage, bool]:
        """The picture's encoding, from the recent ones (True) or made now (False). Call under the model lock."""
        key = image_digest(picture)
        encoded = self.image_cache.get(key)
        if encoded is not None:
            return encoded, True
        with torch.inference_mode():
            encoded = encode(self.network, picture, check)
        self.image_cache.put(key, encoded)
        return encoded, False

    def _locate(self, image: Any, object: str, kind: str, max_objects: int) -> list[dict[str, float]]:
        name = _object_name(object, kind)
        if isinstance(max_objects, bool) or not isinstance(max_objects, int) or max_objects < 1:
            raise RequestError(f"max_objects must be a whole number of at least 1, got {max_objects!r}.")
        source = self._source(image)
        self.load()
        ids = locate_prompt(self.network.config.tokenizer, self._text_ids, kind, name)
        phases = self.runtime.phases(choice=self._decode_threads)
        with self._generation_lock, torch.inference_mode(), phases as decoding:
            encoded = self._encoded(source)[0]
            return locate(
                self.network, encoded, ids, with_size=kind == "detect", max_objects=max_objects, decoding=decoding
            )

    # -- prompts ------------------------------------------------------------------------------

    def _query_ids(self, question: str) -> list[int]:
        return query_prompt(self.network.config.tokenizer, self._text_ids, clean_question(question))

    def _text_ids(self, text: str) -> list[int]:
        """The user's text as token ids; text that spells a special token (``<|endoftext|>``...) is refused."""
        encoding = self.tokenizer.encode(text, add_special_tokens=False)
        special = {i: t.content for i, t in self.tokenizer.get_added_tokens_decoder().items() if t.special}
        found = sorted({special[i] for i in encoding.ids if i in special})
        if found:
            raise RequestError(
                f"The text contains {', '.join(map(repr, found))}, which Moondream reserves for its prompt "
                "markup: remove or reword it."
            )
        ids: list[int] = encoding.ids
        return ids

    def _checked(self, encoded: EncodedImage) -> EncodedImage:
        """Refuse an encoded image made by a model of another shape (its cache would not fit)."""
        self.load()
        text = self.network.config.text
        keys = encoded.cache.keys
        if len(keys) != text.n_layers or keys[0].shape[1] != text.n_kv_heads or keys[0].shape[3] != text.head_dim:
            raise RequestError(
                "This encoded image was made by a different model; encode the picture with this model's encode_image."
            )
        return encoded


def _object_name(object: Any, kind: str) -> str:
    """The object's name as a question is cleaned (control characters and surrounding space dropped)."""
    try:
        return clean_question(object)
    except RequestError:
        raise RequestError(f"Name the object to {kind}, e.g. model.{kind}(image, 'face'); got {object!r}.") from None
