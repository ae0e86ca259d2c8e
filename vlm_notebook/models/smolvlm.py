"""SmolVLM and SmolVLM2 (transformers' Idefics3 and SmolVLM architectures)."""

from __future__ import annotations

import importlib.util
import json
import types
from pathlib import Path
from typing import Any

import torch

from .. import caption_options
from ..errors import CheckpointError
from ._prefix import vision_module
from .generic import TransformersModel
from .llama_step import llama_text_model


class SmolVLM(TransformersModel):
    """SmolVLM / SmolVLM2 instruct checkpoints; default ``smolvlm-256m`` from the Hub.

    The generic transformers family with SmolVLM's extras: one 512 px tile's worth of pixels per
    picture on a CPU, a clear error for SmolVLM2's video-only dependencies, and its own decoding step
    (``llama_step``).

    ``defaults="cpu"`` (the default) shows the vision encoder one 512 px tile's worth per picture;
    ``defaults="card"`` restores the model card's image sizes (many tiles per photo), which a CPU
    encodes one after another (:func:`encode_tile_by_tile`).

    >>> model = SmolVLM("shapes-smolvlm")
    >>> model.caption("vlm_notebook/assets/red-circle-on-white.png")
    'A red circle on a white background.'
    """

    family = "smolvlm"
    default_model = "smolvlm-256m"
    caption_options = caption_options.names("smolvlm")

    def _processor_kwargs(self) -> dict[str, Any]:
        """On a CPU (``defaults="cpu"``), a picture's tiles hold at most the pixels of one 512 px tile
        (:func:`cpu_longest_edge`): SmolVLM's own checkpoints see one tile, so a photo costs one encoder
        pass instead of the model card's 13 for a 640x480 photo: SmolVLM-256M's first token after
        3.3 s instead of 45 s on a shared 2-core CPU (``benchmarks/results/cpu_speed_smolvlm.md``;
        about 1.8 s on a quiet one). A checkpoint with smaller tiles keeps as many as fit. Fine
        detail (small text) may need more tiles: ``defaults="card"`` keeps the checkpoint's own sizes
        (its longest edge, then tiles of ``max_image_size``)."""
        if self.defaults == "card":
            return {}
        image_processor = self.processor.image_processor
        tile, longest = _edge(image_processor.max_image_size), _edge(image_processor.size)
        if tile is None or longest is None or longest <= tile:
            return {}
        edge = cpu_longest_edge(tile, longest)
        return {} if edge == longest else {"size": {"longest_edge": edge}}

    def _load(self) -> None:
        super()._load()
        check_tiles_cheaply(self.model)
        encoder = vision_module(self.model)
        if self.runtime.device.type == "cpu" and encoder is not None:
            encode_tile_by_tile(encoder)

    def _decoding_text_model(self) -> torch.nn.Module | None:
        """SmolVLM's Llama text model (None for a text model :class:`LlamaStep` cannot run)."""
        return llama_text_model(self.model)

    def _load_processor(self, directory: Path) -> Any:
        if _model_type(directory) == "smolvlm" and not _has_modules("torchvision", "num2words"):
            raise CheckpointError(
                f"{str(directory)!r} is a SmolVLM2 checkpoint, whose processor (it also handles video) needs "
                "torchvision and num2words: install both (`pip install num2words` and the torchvision build "
                "that matches your torch), or use a SmolVLM v1 checkpoint such as 'smolvlm-256m'."
            )
        return super()._load_processor(directory)


#: What a CPU's vision encoder is shown of one picture by default: the pixels of one 512 px tile.
CPU_PIXELS = 512 * 512


def cpu_longest_edge(tile: int, longest: int) -> int:
    """The longest edge a CPU resizes pictures to: the checkpoint's own (``longest``) or less, in whole
    tiles, so that a square picture's tiles and the whole picture's one (``(edge / tile)^2 + 1``
    tiles) hold at most :data:`CPU_PIXELS`; one tile at least."""
    edge = tile
    while edge + tile <= longest and (((edge + tile) // tile) ** 2 + 1) * tile * tile <= CPU_PIXELS:
        edge += tile
    return edge


def encode_tile_by_tile(encoder: torch.nn.Module) -> None:
    """Have SmolVLM's vision encoder (transformers' Idefics3 one) take a picture's tiles one at a time:
    the same numbers, sooner on a CPU, where one tile's activations stay in the caches and 13 at once
    do not (``benchmarks/results/vision_attention.md``). A call that asks for more than the last
    hidden state (hidden states, attentions) runs as before."""
    encoder.forward = types.MethodType(_tile_by_tile, encoder)


def _tile_by_tile(
    encoder: torch.nn.Module, pixel_values: torch.Tensor, patch_attention_mask: torch.Tensor | None = None,
    **kwargs: Any,
) -> Any:
    whole = type(encoder).forward
    if pixel_values.shape[0] == 1 or kwargs not in ({}, {"return_dict": True}):
        return whole(encoder, pixel_values, patch_attention_mask, **kwargs)
    masks = [None] * len(pixel_values) if patch_attention_mask is None else patch_attention_mask[:, None]
    outputs = [whole(encoder, tile[None], mask, **kwargs) for tile, mask in zip(pixel_values, masks, strict=True)]
    first = outputs[0]
    first["last_hidden_state"] = torch.cat([output.last_hidden_state for output in outputs])
    return first


def check_tiles_cheaply(model: torch.nn.Module) -> None:
    """Have SmolVLM's ``get_image_features`` (transformers' Idefics3 and SmolVLM ones) see at little
    cost that no tile is padding and no pixel is masked, the usual case, where transformers sums
    every pixel's comparison with zero and every mask value as int64 (a pass over 8 bytes a value
    for each). The same features either way (other inputs go to transformers')."""
    inner = getattr(model, "model", None)
    if inner is not None and hasattr(inner, "get_image_features") and hasattr(inner, "connector"):
        inner.get_image_features = types.MethodType(_image_features, inner)


def _image_features(
    inner: Any, pixel_values: torch.Tensor, pixel_attention_mask: torch.Tensor | None = None,
    **kwargs: Any,
) -> Any:
    tiles = pixel_values.to(dtype=inner.dtype).flatten(0, 1)
    if kwargs not in ({}, {"return_dict": True}) or not _every_tile_whole(tiles, pixel_attention_mask):
        return type(inner).get_image_features(inner, pixel_values, pixel_attention_mask, **kwargs)
    patch = inner.config.vision_config.patch_size
    every_patch = torch.ones(
        len(tiles), tiles.shape[2] // patch, tiles.shape[3] // patch, dtype=torch.bool, device=tiles.device
    )
    outputs = inner.vision_model(pixel_values=tiles, patch_attention_mask=every_patch, return_dict=True)
    features = inner.connector(outputs.last_hidden_state)
    per_picture = features.split(pixel_values.shape[1])
    outputs.pooler_output = [picture.reshape(-1, picture.shape[-1]) for picture in per_picture]
    return outputs


def _every_tile_whole(tiles: torch.Tensor, pixel_attention_mask: torch.Tensor | None) -> bool:
    """Whether no tile is all zeros (transformers' padding tiles) and no pixel is masked out."""
    unmasked = pixel_attention_mask is None or bool(pixel_attention_mask.all())
    return unmasked and bool(tiles.flatten(1).ne(0).any(dim=1).all())


def _edge(size: Any) -> int | None:
    """The ``longest_edge`` of a processor size setting (a dict or transformers' SizeDict)."""
    value = size.get("longest_edge") if isinstance(size, dict) else getattr(size, "longest_edge", None)
    return int(value) if value is not None else None


def _model_type(directory: Path) -> str | None:
    model_type = json.loads((directory / "config.json").read_text()).get("model_type")
    return model_type if isinstance(model_type, str) else None


def _has_modules(*names: str) -> bool:
    return all(importlib.util.find_spec(name) is not None for name in names)
