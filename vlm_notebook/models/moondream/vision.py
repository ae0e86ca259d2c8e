"""The SigLIP-style vision encoder and the projection of its features into the text model.

Follows ``moondream/torch/vision.py`` of github.com/vikhyat/moondream (facts only): patches
of 14 px flattened channel-first, a linear patch embedding, a learnt position embedding,
pre-norm blocks, and an MLP projection of [global crop features, pooled local features].
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..attention import attend_many_queries
from .config import VisionConfig
from .layers import MLP, merge_heads, split_heads


class VisionAttention(nn.Module):
    """Full (bidirectional) self-attention over a crop's patches."""

    def __init__(self, dim: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (split_heads(t, self.n_heads) for t in self.qkv(x).chunk(3, dim=-1))
        return self.proj(merge_heads(attend_many_queries(q, k, v, q.shape[-1] ** -0.5)))  # type: ignore[no-any-return]


class VisionBlock(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(config.enc_dim)
        self.attn = VisionAttention(config.enc_dim, config.enc_n_heads)
        self.ln2 = nn.LayerNorm(config.enc_dim)
        self.mlp = MLP(config.enc_dim, config.enc_ff_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))  # type: ignore[no-any-return]


def patchify(crops: torch.Tensor, patch: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, H/p * W/p, C * p * p), each patch flattened channel-first."""
    n, channels, height, width = crops.shape
    x = crops.reshape(n, channels, height // patch, patch, width // patch, patch)
    x = x.permute(0, 2, 4, 1, 3, 5)  # (N, H/p, W/p, C, p, p)
    return x.reshape(n, (height // patch) * (width // patch), channels * patch * patch)


class VisionModel(nn.Module):
    """Encoder (``patch_emb``, ``pos_emb``, ``blocks``, ``post_ln``) plus the projection ``proj_mlp``."""

    def __init__(self, config: VisionConfig):
        super().__init__()
        self.config = config
        patch_dim = config.enc_patch_size**2 * config.in_channels
        self.patch_emb = nn.Linear(patch_dim, config.enc_dim)
        self.pos_emb = nn.Parameter(torch.zeros(1, config.n_patches, config.enc_dim))
        self.blocks = nn.ModuleList(VisionBlock(config) for _ in range(config.enc_n_layers))
        self.post_ln = nn.LayerNorm(config.enc_dim)
        self.proj_mlp = MLP(2 * config.enc_dim, config.proj_inner_dim, config.proj_out_dim)

    def encode(self, crops: torch.Tensor) -> torch.Tensor:
        """Crops (N, C, S, S) scaled to -1..1 -> patch features (N, grid * grid, enc_dim)."""
        x = self.patch_emb(patchify(crops, self.config.enc_patch_size)) + self.pos_emb
        for block in self.blocks:
            x = block(x)
        return self.post_ln(x)  # type: ignore[no-any-return]

    def project(self, global_features: torch.Tensor, local_grid: torch.Tensor) -> torch.Tensor:
        """Global crop features (P, D) and the stitched local feature grid (h, w, D) -> (P, text dim)."""
        grid = self.config.grid
        pooled = F.adaptive_avg_pool2d(local_grid.permute(2, 0, 1), (grid, grid))  # (D, grid, grid)
        pooled = pooled.permute(1, 2, 0).reshape(grid * grid, self.config.enc_dim)
        return self.proj_mlp(torch.cat([global_features, pooled], dim=-1))  # type: ignore[no-any-return]
