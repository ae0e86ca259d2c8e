"""Sizes and prompt templates of Moondream 2 (release 2025-06-21), full size by default.

Field names follow ``moondream/torch/config.py`` of github.com/vikhyat/moondream, and a
checkpoint's ``config.json`` holds them under ``config`` as ``{"text": ..., "vision": ...,
"region": ..., "tokenizer": ...}``: the published checkpoint's entry is empty (every default
below), our tiny ``shapes-moondream`` gives every size. Prompt templates are kept flat here
(``caption_short``, ``query``, ...), each a prefix and a suffix of token ids.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class TextConfig:
    """The Phi-style text model: parallel attention and MLP blocks, partial rotary."""

    dim: int = 2048
    ff_dim: int = 8192
    n_layers: int = 24
    vocab_size: int = 51200
    max_context: int = 2048
    n_heads: int = 32
    n_kv_heads: int = 32
    rope_theta: float = 10000.0

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def rotary_dim(self) -> int:
        """Rotary embedding covers the first half of each head (32 of 64 at full size)."""
        return self.head_dim // 2


@dataclass(frozen=True)
class VisionConfig:
    """The SigLIP-style encoder, its overlapping crops and the projection into the text model."""

    enc_dim: int = 1152
    enc_patch_size: int = 14
    enc_n_layers: int = 27
    enc_ff_dim: int = 4304
    enc_n_heads: int = 16
    proj_out_dim: int = 2048
    crop_size: int = 378
    in_channels: int = 3
    max_crops: int = 12
    overlap_margin: int = 4
    proj_inner_dim: int = 8192

    @property
    def grid(self) -> int:
        """Patches along one side of a crop (27 at full size)."""
        return self.crop_size // self.enc_patch_size

    @property
    def n_patches(self) -> int:
        return self.grid * self.grid


@dataclass(frozen=True)
class RegionConfig:
    """Fourier-feature encoders and MLP decoders for coordinates and sizes."""

    dim: int = 2048
    coord_feat_dim: int = 256
    coord_out_dim: int = 1024
    size_feat_dim: int = 512
    size_out_dim: int = 2048
    inner_dim: int = 8192


def _default_templates() -> dict[str, dict[str, list[int]]]:
    """Token ids of the published prompt templates (tokenizer ``moondream/starmie-v1``)."""
    return {
        "caption_short": {"prefix": [1, 32708, 2, 12492, 3]},
        "caption_normal": {"prefix": [1, 32708, 2, 6382, 3]},
        "caption_long": {"prefix": [1, 32708, 2, 4059, 3]},
        "query": {"prefix": [1, 15381, 2], "suffix": [3]},
        "detect": {"prefix": [1, 7235, 476, 2], "suffix": [3]},
        "point": {"prefix": [1, 2581, 2], "suffix": [3]},
    }


@dataclass(frozen=True)
class TokenizerConfig:
    """Special token ids and prompt templates (prefix and suffix ids around the user's text)."""

    bos_id: int = 0
    eos_id: int = 0
    answer_id: int = 3
    coord_id: int = 5
    size_id: int = 6
    templates: dict[str, dict[str, list[int]]] = field(default_factory=_default_templates)

    def template(self, name: str) -> tuple[list[int], list[int]]:
        """The (prefix, suffix) token ids of template ``name``."""
        parts = self.templates[name]
        return list(parts.get("prefix", [])), list(parts.get("suffix", []))


@dataclass(frozen=True)
class MoondreamConfig:
    """The whole model: text, vision, region and tokenizer settings."""

    text: TextConfig = field(default_factory=TextConfig)
    vision: VisionConfig = field(default_factory=VisionConfig)
    region: RegionConfig = field(default_factory=RegionConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)

    @property
    def prefix_len(self) -> int:
        """BOS plus the image tokens: the block that attends bidirectionally (730 at full size)."""
        return 1 + self.vision.n_patches

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> MoondreamConfig:
        """Build from the ``config`` entry of a checkpoint's config.json (missing parts: defaults)."""
        return cls(
            text=TextConfig(**values.get("text", {})),
            vision=VisionConfig(**values.get("vision", {})),
            region=RegionConfig(**values.get("region", {})),
            tokenizer=TokenizerConfig(**values.get("tokenizer", {})),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
