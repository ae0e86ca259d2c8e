"""Qwen2-VL and Qwen2.5-VL (transformers' ``qwen2_vl`` and ``qwen2_5_vl`` architectures).

Multilingual: ``caption(image, language="ja")`` asks for the caption in Japanese, with a
prompt written in Japanese; ``query`` answers in the language of the question.

Picture size decides time to first token on a CPU. Qwen2-VL turns a picture resized to a
multiple of 28 px into (H/28) x (W/28) image tokens, and its vision tower sees 4 patches per
token with full attention. The model card's ``max_pixels`` (12845056) gives 391 tokens for
a 640 x 480 photo and 2691 for 1920 x 1080; here the default cap is 256 * 28 * 28 = 200704
pixels, at most about 256 tokens. ``Qwen2VL(max_pixels=12845056)`` restores the card's
default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch

from .. import caption_options
from ..errors import RequestError
from ..images import check_aspect_ratio
from ..request import Request
from .generic import load_processor
from .hf import TransformersVLM
from .llama_step import qwen2_vl_text_model

#: Default cap on a picture's size in pixels: at most about 256 image tokens.
DEFAULT_MAX_PIXELS = 256 * 28 * 28
#: The model card's default ``max_pixels`` (up to 16384 image tokens).
MODEL_CARD_MAX_PIXELS = 12845056
#: The longest side over the shortest that Qwen2-VL's image processor accepts.
MAX_ASPECT_RATIO = 200

class Qwen2VL(TransformersVLM):
    """Qwen2-VL / Qwen2.5-VL instruct checkpoints; default ``qwen2-vl-2b`` from the Hub.

    ``max_pixels`` caps the picture size (default 256 * 28 * 28, never above the checkpoint's
    own cap; pass 12845056 or ``defaults="card"`` for the model card's default), ``min_pixels``
    sets the floor (default: the checkpoint's).

    >>> model = Qwen2VL("shapes-qwen2vl")
    >>> model.caption("vlm_notebook/assets/red-circle-on-white.png", language="ja")
    '白い背景に赤い円。'
    """

    family = "qwen2vl"
    default_model = "qwen2-vl-2b"
    caption_options = caption_options.names("qwen2vl")
    image_token: ClassVar[str] = "<|image_pad|>"

    def __init__(
        self,
        model: str | None = None,
        *,
        revision: str | None = None,
        max_pixels: int | None = None,
        min_pixels: int | None = None,
        defaults: str = "cpu",
        int8: bool = False,
        device: str = "auto",
        dtype: str = "auto",
    ):
        for name, value in (("max_pixels", max_pixels), ("min_pixels", min_pixels)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 28 * 28):
                raise RequestError(f"{name} must be a whole number of pixels, at least 784 (28 x 28), got {value!r}.")
        if max_pixels is not None and min_pixels is not None and min_pixels > max_pixels:
            raise RequestError(f"min_pixels ({min_pixels}) must not exceed max_pixels ({max_pixels}).")
        super().__init__(model, revision=revision, defaults=defaults, int8=int8, device=device, dtype=dtype)
        self._max_pixels = max_pixels
        self._min_pixels = min_pixels

    @property
    def pixel_range(self) -> tuple[int, int]:
        """(min_pixels, max_pixels) used for pictures (the model must be loaded)."""
        self.load()
        size = self.processor.image_processor.size
        floor, cap = int(size["shortest_edge"]), int(size["longest_edge"])
        policy = cap if self.defaults == "card" else min(DEFAULT_MAX_PIXELS, cap)
        max_pixels = self._max_pixels if self._max_pixels is not None else policy
        min_pixels = self._min_pixels if self._min_pixels is not None else min(floor, max_pixels)
        return min_pixels, max_pixels

    def _load_processor(self, directory: Path) -> Any:
        """The checkpoint's own processor class (Qwen2-VL's or Qwen2.5-VL's): ``AutoProcessor`` when
        it can build it (it needs torchvision for the video part), else the same class built from
        its picture parts (``generic.load_processor``)."""
        return load_processor(directory)

    def _check_request(self, request: Request) -> None:
        super()._check_request(request)
        check_aspect_ratio(request.picture, MAX_ASPECT_RATIO, "Qwen2-VL")

    def _processor_kwargs(self) -> dict[str, Any]:
        min_pixels, max_pixels = self.pixel_range
        return {"size": {"shortest_edge": min_pixels, "longest_edge": max_pixels}}

    def _decoding_text_model(self) -> torch.nn.Module | None:
        """Qwen2-VL's text model (Qwen2.5-VL's keeps ``generate``)."""
        return qwen2_vl_text_model(self.model)

    def _prompt_positions(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor | None, int]:
        """The multimodal rotary positions of the whole prompt (the picture's tokens numbered by
        their grid), as ``generate`` makes them, and the offset they leave for the answer's words."""
        if "image_grid_thw" not in inputs or "mm_token_type_ids" not in inputs:
            return None, 0
        positions, deltas = self.model.model.get_rope_index(
            inputs["input_ids"], mm_token_type_ids=inputs["mm_token_type_ids"],
            image_grid_thw=inputs["image_grid_thw"], attention_mask=inputs.get("attention_mask"),
        )
        return positions, int(deltas.reshape(-1)[0])
