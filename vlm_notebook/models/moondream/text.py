"""The Phi-style text model: parallel attention + MLP blocks, partial rotary, prefix attention.

Follows ``moondream/torch/text.py`` and ``rope.py`` of github.com/vikhyat/moondream (facts
only). Each block computes ``x + attn(ln(x)) + mlp(ln(x))`` with one LayerNorm; rotary
position embedding covers the first half of every head. The BOS token and the image tokens
(the "prefix") attend to each other in both directions; everything after them is causal.
Rotary angles are computed from the positions on the fly, so the module has no buffers and
its state_dict is exactly the published tensors.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from ..attention import attend_many_queries, attend_one_query
from .cache import KVCache, PositionedCache
from .config import TextConfig
from .layers import MLP, merge_heads, split_heads


def rotary_tables(positions: torch.Tensor, rotary_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotary angles, each (T, rotary_dim / 2)."""
    exponents = torch.arange(0, rotary_dim, 2, dtype=torch.float32, device=positions.device) / rotary_dim
    inverse_frequencies = 1.0 / (theta**exponents)
    angles = positions.to(torch.float32)[:, None] * inverse_frequencies[None, :]
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first ``2 * cos.shape[-1]`` features of each head of x (B, H, T, D).

    Pairs feature i with feature i + half (the "rotate half" layout). Moondream's reference
    interleaves the rotated output instead; queries and keys get the same permutation, so
    every attention score is identical.
    """
    half = cos.shape[-1]
    real, imaginary, rest = x[..., :half].float(), x[..., half : 2 * half].float(), x[..., 2 * half :]
    rotated = [(real * cos - imaginary * sin).to(x.dtype), (real * sin + imaginary * cos).to(x.dtype)]
    return torch.cat([*rotated, rest], dim=-1)  # rotated in fp32, kept in the model's format


def prefix_causal_mask(length: int, prefix: int, device: torch.device | None = None) -> torch.Tensor:
    """(T, T) boolean mask, True where attention is allowed: causal, plus the prefix block."""
    mask = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    mask[:prefix, :prefix] = True
    return mask


def continuation_mask(start: int, length: int, device: torch.device | None = None) -> torch.Tensor:
    """(T, start + T) mask for T new tokens after ``start`` cached ones: all cached, then causal."""
    mask = torch.ones(length, start + length, dtype=torch.bool, device=device)
    mask[:, start:] = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    return mask


class TextAttention(nn.Module):
    def __init__(self, config: TextConfig):
        super().__init__()
        self.config = config
        kv_dim = config.n_kv_heads * config.head_dim
        self.qkv = nn.Linear(config.dim, config.dim + 2 * kv_dim)
        self.proj = nn.Linear(config.dim, config.dim)

    def forward(
        self, x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor | None,
        cache: KVCache | PositionedCache | None, layer: int,
    ) -> torch.Tensor:
        config = self.config
        kv_dim = config.n_kv_heads * config.head_dim
        q, k, v = self.qkv(x).split([config.dim, kv_dim, kv_dim], dim=-1)
        q = apply_rotary(split_heads(q, config.n_heads), *rotary)  # (B, H, T, D)
        k = apply_rotary(split_heads(k, config.n_kv_heads), *rotary)
        v = split_heads(v, config.n_kv_heads)
        if cache is not None:
            k, v = cache.write(layer, k, v)
        if mask is None and q.shape[:3] == (1, config.n_heads, 1):  # one new token, as decoding feeds
            out = attend_one_query(q, k[0], v[0], config.head_dim**-0.5)
        elif mask is None:  # the image prefix, which attends both ways
            out = attend_many_queries(q, k, v, config.head_dim**-0.5)
        else:
            grouped = config.n_kv_heads != config.n_heads
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=grouped)
        return self.proj(merge_heads(out))  # type: ignore[no-any-return]


class TextBlock(nn.Module):
    def __init__(self, config: TextConfig):
        super().__init__()
        self.ln = nn.LayerNorm(config.dim)
        self.attn = TextAttention(config)
        self.mlp = MLP(config.dim, config.ff_dim)

    def forward(
        self, x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor | None,
        cache: KVCache | PositionedCache | None, layer: int,
    ) -> torch.Tensor:
        normed = self.ln(x)
        return x + self.attn(normed, rotary, mask, cache, layer) + self.mlp(normed)  # type: ignore[no-any-return]


class TextModel(nn.Module):
    """``wte``, ``blocks``, ``post_ln`` and ``lm_head`` (untied from ``wte``)."""

    def __init__(self, config: TextConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Parameter(torch.empty(config.vocab_size, config.dim))
        self.blocks = nn.ModuleList(TextBlock(config) for _ in range(config.n_layers))
        self.post_ln = nn.LayerNorm(config.dim)
        self.lm_head = nn.Linear(config.dim, config.vocab_size)

    def embed(self, token_ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(token_ids, self.wte)

    def forward(
        self, x: torch.Tensor, start: int | torch.Tensor, mask: torch.Tensor | None = None,
        cache: KVCache | PositionedCache | None = None, between_layers: Callable[[], None] | None = None,
    ) -> torch.Tensor:
        """Hidden states (B, T, dim) of embeddings ``x`` at positions ``start``, ``start + 1``, ...
        (``start`` a number, or a one-element tensor on the device for a step of fixed shapes).

        With ``cache`` the new keys and values are appended to it and attention also sees the
        cached ones; ``mask`` (True or 0 = may attend) is None for full attention.
        """
        positions = torch.arange(x.shape[1], device=x.device) + start
        rotary = rotary_tables(positions, self.config.rotary_dim, self.config.rope_theta)
        for layer, block in enumerate(self.blocks):
            if between_layers is not None:
                between_layers()
            x = block(x, rotary, mask, cache, layer)
        if cache is not None:
            cache.advance(x.shape[1])
        return x

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.post_ln(hidden))  # type: ignore[no-any-return]
