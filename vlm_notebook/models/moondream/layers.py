"""Building blocks shared by the vision encoder, the text model and the region model."""

from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Module):
    """``fc1``, tanh-approximated GELU, ``fc2`` (the names the published weights use)."""

    def __init__(self, dim: int, inner_dim: int, out_dim: int | None = None):
        super().__init__()
        self.fc1 = nn.Linear(dim, inner_dim)
        self.activation_fn: nn.Module = nn.GELU(approximate="tanh")  # a module: the CPU runtime may fuse it into fc1
        self.fc2 = nn.Linear(inner_dim, out_dim or dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation_fn(self.fc1(x)))  # type: ignore[no-any-return]


def split_heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(B, T, H * D) -> (B, H, T, D)."""
    batch, length, width = x.shape
    return x.view(batch, length, n_heads, width // n_heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, H, T, D) -> (B, T, H * D)."""
    batch, heads, length, head_dim = x.shape
    return x.transpose(1, 2).reshape(batch, length, heads * head_dim)
