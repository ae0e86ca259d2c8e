"""The whole Moondream 2 network, laid out like the published ``model.safetensors``.

The published file holds ``model.vision.*``, ``model.text.*`` and ``model.region.*``, so the
root module has one child, ``model``, and its state_dict is exactly the file's tensors: the
official weights load with ``load_state_dict(strict=True)``, no renaming.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import MoondreamConfig
from .region import RegionModel
from .text import TextModel
from .vision import VisionModel


class MoondreamNetwork(nn.Module):
    """Vision encoder with projection, text model, region model."""

    def __init__(self, config: MoondreamConfig):
        super().__init__()
        self.config = config
        self.vision = VisionModel(config.vision)
        self.text = TextModel(config.text)
        self.region = RegionModel(config.region)


class MoondreamCheckpoint(nn.Module):
    """The root whose state_dict names match the checkpoint file (``model.`` + the network's)."""

    def __init__(self, config: MoondreamConfig):
        super().__init__()
        self.model = MoondreamNetwork(config)


def build_on_meta(config: MoondreamConfig) -> MoondreamCheckpoint:
    """The module tree with shapes only (no memory): for checking names and shapes."""
    with torch.device("meta"):
        return MoondreamCheckpoint(config)
