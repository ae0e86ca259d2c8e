"""Running the network: encode a picture once, then answer from its cached prefix.

1. ``encode``: crops -> vision encoder -> projection; BOS + image tokens through the text
   model with full attention among them (the prefix), keeping their keys and values.
2. ``generate_text``: copy the prefix into a cache sized for the request, prefill the prompt
   tokens (causal after the prefix), then decode one token at a time until EOS.
3. ``locate``: like 2, but after the prompt the region model reads coordinates (and sizes)
   off the hidden states and feeds them back as embeddings, one object at a time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch
from PIL import Image

from ... import engine
from ...detokenizer import Detokenizer
from ...errors import RequestError
from ...options import GenerationOptions
from ...stream import TokenSink
from ..graphs import Replayer, seen_so_far
from .cache import EncodedImage, KVCache, PositionedCache
from .crops import overlap_crops, stitch
from .network import MoondreamNetwork
from .text import continuation_mask

Check = Callable[[], None]


def image_embeddings(
    net: MoondreamNetwork, picture: Image.Image, check: Check | None = None
) -> tuple[torch.Tensor, int]:
    """(image tokens, text dim) embeddings of an RGB picture, and the number of crops encoded."""
    config = net.config.vision
    crops = overlap_crops(picture, config)
    if check is not None:
        check()
    pixels = crops.pixels.to(device=_device(net), dtype=net.text.wte.dtype)
    features = encoded_crops(net, pixels, check)  # (N, grid * grid, enc_dim)
    local = features[1:].view(-1, config.grid, config.grid, config.enc_dim)
    stitched = stitch(local, crops.tiling, config.overlap_margin)
    return net.vision.project(features[0], stitched), crops.pixels.shape[0]


def encoded_crops(net: MoondreamNetwork, pixels: torch.Tensor, check: Check | None = None) -> torch.Tensor:
    """The vision encoder's features of every crop: all at once on an accelerator, one after another
    on a CPU, where one crop's activations stay in the caches and a picture's nine do not (the same
    numbers, sooner: ``benchmarks/results/vision_attention.md``; and a Stop is seen between crops)."""
    if pixels.device.type != "cpu":
        return net.vision.encode(pixels)
    features = []
    for crop in pixels:
        if check is not None:
            check()
        features.append(net.vision.encode(crop[None]))
    return torch.cat(features)


def encode(net: MoondreamNetwork, picture: Image.Image, check: Check | None = None) -> EncodedImage:
    """Vision pass and image prefill, once; the result answers any number of requests."""
    embeddings, crops = image_embeddings(net, picture, check)
    return prefill_image(net, embeddings, picture.size, crops, check)


def prefill_image(
    net: MoondreamNetwork,
    embeddings: torch.Tensor,
    size: tuple[int, int],
    crops: int,
    check: Check | None = None,
) -> EncodedImage:
    """BOS and the image's ``embeddings`` (tokens x dim) through the text model, kept as a prefix."""
    bos = net.text.embed(_ids(net, [net.config.tokenizer.bos_id]))
    prefix = torch.cat([bos, embeddings[None]], dim=1)  # (1, 1 + image tokens, dim)
    text = net.config.text
    cache = KVCache(text.n_layers, text.n_kv_heads, text.head_dim, prefix.shape[1], prefix.device, prefix.dtype)
    net.text(prefix, 0, mask=None, cache=cache, between_layers=check)  # the prefix attends both ways
    return EncodedImage(cache=cache, size=size, crops=crops)


def first_logits(net: MoondreamNetwork, picture: Image.Image, prompt_ids: list[int]) -> torch.Tensor:
    """The logits of the first token answering ``prompt_ids`` about ``picture`` (no sampling)."""
    _, hidden = _prefill(net, encode(net, picture), _ids(net, prompt_ids), 1, None)
    return net.text.logits(hidden)


def _prefill(
    net: MoondreamNetwork, encoded: EncodedImage, prompt: torch.Tensor, extra: int, check: Check | None
) -> tuple[KVCache, torch.Tensor]:
    """A fresh cache (prefix + prompt + ``extra`` positions) and the prompt's hidden states."""
    limit = net.config.text.max_context
    needed = encoded.tokens + prompt.shape[1] + extra
    if encoded.tokens + prompt.shape[1] >= limit:
        raise RequestError(
            f"The prompt is too long: the image and prompt take {encoded.tokens + prompt.shape[1]} of the model's "
            f"{limit} positions. Ask a shorter question."
        )
    cache = encoded.cache.extended(min(needed, limit))
    mask = continuation_mask(cache.length, prompt.shape[1], prompt.device)
    hidden = net.text(net.text.embed(prompt), cache.length, mask=mask, cache=cache, between_layers=check)
    return cache, hidden[:, -1:]


def generate_text(
    net: MoondreamNetwork,
    encoded: EncodedImage,
    prompt_ids: list[int],
    options: GenerationOptions,
    sink: TokenSink | None = None,
    detokenizer: Detokenizer | None = None,
    check: Check | None = None,
    before_step: Callable[[], None] | None = None,
) -> list[int]:
    """The token ids of the answer to ``prompt_ids`` (a stop ends them), decoded by the engine
    (``vlm_notebook.engine``) into ``sink``; ``check`` runs between the prefill's layers.

    As in the reference, the answer token may be the first token generated but never a later one.
    """
    tokens = net.config.tokenizer
    cache, hidden = _prefill(net, encoded, _ids(net, prompt_ids), options.max_new_tokens, check)
    # The last token is never fed back, so the cache's free places bound the answer's length plus one.
    options = replace(options, max_new_tokens=min(options.max_new_tokens, cache.capacity - cache.length + 1))

    def step(token: int) -> torch.Tensor:
        logits: torch.Tensor = net.text.logits(_step(net, cache, net.text.embed(_ids(net, [token]))))
        return logits

    decode_step = GraphedStep(net, cache) if cache.keys[0].is_cuda else step
    return engine.generate(
        net.text.logits(hidden), decode_step, options, {tokens.eos_id}, sink, detokenizer,
        banned_after_first={tokens.answer_id}, before_step=before_step,
    )


class GraphedStep:
    """The decoding step (a token id in, the next logits out) with every shape fixed, for a GPU:
    the token and its position are tensors on the device, keys and values are written at that
    position (:class:`~.cache.PositionedCache`), and attention reads the whole cache through a
    mask of the positions so far. On CUDA it is captured once as a CUDA graph (at the answer's
    second token) and replayed (:class:`~vlm_notebook.models.graphs.Replayer`); elsewhere (the CPU
    tests) it runs operator by operator, so its numbers are checked against the plain step's."""

    def __init__(self, net: MoondreamNetwork, cache: KVCache):
        device = cache.keys[0].device
        self._net, self._cache = net, cache
        self._token = torch.zeros(1, dtype=torch.long, device=device)
        self._position = torch.full((1,), cache.length, dtype=torch.long, device=device)
        self._slots = torch.arange(cache.capacity, device=device)
        self._positioned = PositionedCache(cache, self._position)
        #: Replays a CUDA graph of the step on CUDA; else runs it operator by operator.
        self.replayer = Replayer(self._fixed_step, self._position)

    def __call__(self, token: int) -> torch.Tensor:
        if self._cache.length >= self._cache.capacity:
            raise ValueError(f"the key/value cache holds {self._cache.capacity} positions; all are used")
        self._token.fill_(token)
        logits = self.replayer()
        self._cache.advance(1)
        return logits

    def _fixed_step(self) -> torch.Tensor:
        """One step that reads the token and position tensors and moves the position on by one."""
        text = self._net.text
        embedding = text.embed(self._token).view(1, 1, -1)
        seen = seen_so_far(self._slots, self._position, embedding.dtype)
        hidden = text(embedding, self._position, mask=seen, cache=self._positioned)
        self._position.add_(1)
        return text.logits(hidden)


def _device(net: MoondreamNetwork) -> torch.device:
    return net.text.wte.device


def _ids(net: MoondreamNetwork, ids: list[int]) -> torch.Tensor:
    """Token ids as a (1, n) tensor on the network's device."""
    return torch.tensor([ids], device=_device(net))


def _step(net: MoondreamNetwork, cache: KVCache, embedding: torch.Tensor) -> torch.Tensor:
    """Feed one embedding (dim,) and return its hidden state (1, 1, dim)."""
    hidden: torch.Tensor = net.text(embedding.view(1, 1, -1), cache.length, cache=cache)
    return hidden


def locate(
    net: MoondreamNetwork,
    encoded: EncodedImage,
    prompt_ids: list[int],
    with_size: bool,
    max_objects: int,
    decoding: Callable[[], None] | None = None,
) -> list[dict[str, float]]:
    """Objects found after ``prompt_ids``: boxes (``with_size``) or points, normalised to 0..1.

    Per object: the hidden state gives x; x fed back gives y; y fed back gives the size (for
    boxes); the last one fed back says, as a token, whether another object follows (not EOS).
    """
    region, eos = net.region, net.config.tokenizer.eos_id
    per_object = 3 if with_size else 2
    cache, hidden = _prefill(net, encoded, _ids(net, prompt_ids), per_object * max_objects, None)
    if decoding is not None:
        decoding()
    found: list[dict[str, float]] = []
    while int(net.text.logits(hidden).argmax()) != eos and len(found) < max_objects:
        x = region.coord_value(region.decode_coord(hidden).argmax(-1)).view(1, 1)
        hidden = _step(net, cache, region.encode_coord(x))
        y = region.coord_value(region.decode_coord(hidden).argmax(-1)).view(1, 1)
        hidden = _step(net, cache, region.encode_coord(y))
        if not with_size:
            found.append({"x": float(x), "y": float(y)})
            continue
        size = region.size_value(region.decode_size(hidden).argmax(-1)).view(1, 2)
        hidden = _step(net, cache, region.encode_size(size))
        cx, cy, w, h = float(x), float(y), float(size[0, 0]), float(size[0, 1])
        found.append({"x_min": cx - w / 2, "y_min": cy - h / 2, "x_max": cx + w / 2, "y_max": cy + h / 2})
    return found
