"""The region model: coordinates and sizes in and out of the text model.

Follows ``moondream/torch/region.py`` of github.com/vikhyat/moondream (facts only). A value
enters the text model as Fourier features (cos and sin of 2 pi x W) through a linear layer;
it leaves as logits over bins: ``coord_out_dim`` bins for a coordinate in 0..1, and
``size_out_dim / 2`` log-scale bins each for width and height, from 1/1024 to 1.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import RegionConfig
from .layers import MLP

_LOG2_MIN_SIZE = -10.0  # sizes are 2 ** (-10 .. 0) of the picture


def fourier_features(x: torch.Tensor, frequencies: torch.Tensor) -> torch.Tensor:
    """(N, k) values and (k, F) frequencies -> (N, 2F) features [cos, sin]."""
    angles = 2 * math.pi * x @ frequencies
    return torch.cat([angles.cos(), angles.sin()], dim=-1)


class RegionModel(nn.Module):
    def __init__(self, config: RegionConfig):
        super().__init__()
        self.coord_features = nn.Parameter(torch.zeros(1, config.coord_feat_dim // 2))
        self.coord_encoder = nn.Linear(config.coord_feat_dim, config.dim)
        self.coord_decoder = MLP(config.dim, config.inner_dim, config.coord_out_dim)
        self.size_features = nn.Parameter(torch.zeros(2, config.size_feat_dim // 2))
        self.size_encoder = nn.Linear(config.size_feat_dim, config.dim)
        self.size_decoder = MLP(config.dim, config.inner_dim, config.size_out_dim)

    @property
    def coord_bins(self) -> int:
        return self.coord_decoder.fc2.out_features

    @property
    def size_bins(self) -> int:
        return self.size_decoder.fc2.out_features // 2

    def encode_coord(self, coord: torch.Tensor) -> torch.Tensor:
        """(N, 1) coordinates in 0..1 -> (N, dim) embeddings."""
        features = fourier_features(coord.to(self.coord_features.dtype), self.coord_features)
        return self.coord_encoder(features)  # type: ignore[no-any-return]

    def decode_coord(self, hidden: torch.Tensor) -> torch.Tensor:
        """Hidden states (..., dim) -> coordinate logits (..., coord_bins)."""
        return self.coord_decoder(hidden)  # type: ignore[no-any-return]

    def encode_size(self, size: torch.Tensor) -> torch.Tensor:
        """(N, 2) width and height in 0..1 -> (N, dim) embeddings."""
        features = fourier_features(size.to(self.size_features.dtype), self.size_features)
        return self.size_encoder(features)  # type: ignore[no-any-return]

    def decode_size(self, hidden: torch.Tensor) -> torch.Tensor:
        """Hidden states (..., dim) -> size logits (..., 2, size_bins): width, then height."""
        logits: torch.Tensor = self.size_decoder(hidden)
        return logits.view(*logits.shape[:-1], 2, self.size_bins)

    def coord_value(self, bin_index: torch.Tensor) -> torch.Tensor:
        return bin_index.to(torch.float32) / self.coord_bins

    def coord_bin(self, value: torch.Tensor) -> torch.Tensor:
        return (value * self.coord_bins).long().clamp(0, self.coord_bins - 1)

    def size_value(self, bin_index: torch.Tensor) -> torch.Tensor:
        scale = -_LOG2_MIN_SIZE / (self.size_bins - 1)
        return torch.pow(2.0, bin_index.to(torch.float32) * scale + _LOG2_MIN_SIZE)

    def size_bin(self, value: torch.Tensor) -> torch.Tensor:
        log2 = torch.log2(value.clamp(min=2.0**_LOG2_MIN_SIZE))
        index = (log2 - _LOG2_MIN_SIZE) / -_LOG2_MIN_SIZE * (self.size_bins - 1)
        return index.round().long().clamp(0, self.size_bins - 1)
