"""Stage 1 of a ``shapes-*`` recipe: pretrain the vision tower to tell the scenes apart.

A freshly initialised tower learns shapes very slowly through the language-model loss
alone (the text model must first learn to look at the image tokens, while the tower gets
almost no gradient). Real VLMs start from a pretrained vision encoder; here the tower is
pretrained for a minute with linear heads on its mean-pooled output (shape, colour,
background), then the whole model is trained on text. Works with any tower whose forward
takes ``pixel_values`` and returns an object with ``last_hidden_state``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image
from torch import nn

from vlm_notebook import shapes
from vlm_notebook.training.pictures import EVEN_BACKGROUNDS, EVEN_SHAPES, PictureSource, random_scene

LABEL_SIZES: tuple[int, ...] = (len(shapes.SHAPES), len(shapes.COLOURS), len(shapes.BACKGROUNDS))


def scene_labels(scene: shapes.Scene) -> list[int]:
    """Class indices of a scene: shape, colour, background."""
    return [
        shapes.SHAPES.index(scene.shape),
        shapes.COLOURS.index(scene.colour),
        shapes.BACKGROUNDS.index(scene.background),
    ]


def spread_patch_kernel(weight: torch.Tensor, factor: int) -> torch.Tensor:
    """A (D, C, p, p) patch kernel for patches ``factor`` times as large: every weight spread evenly
    over the ``factor`` x ``factor`` pixels it stands for, so that it gives on a crop what the old
    kernel gives on that crop box-averaged ``factor`` times smaller."""
    return weight.repeat_interleave(factor, dim=2).repeat_interleave(factor, dim=3) / factor**2


@dataclass
class ClassifierOutput:
    """Forward result, shaped like a transformers output as far as the loop needs."""

    loss: torch.Tensor
    logits: list[torch.Tensor]


def labelled_pictures(
    rng: random.Random,
    source: PictureSource,
    count: int,
    background_weights: Sequence[float] = EVEN_BACKGROUNDS,
    shape_weights: Sequence[float] = EVEN_SHAPES,
) -> tuple[list[Image.Image], torch.Tensor]:
    """``count`` pictures of random scenes (:func:`random_scene`) from ``source`` and their labels,
    (count, 3) class indices."""
    scenes = [random_scene(rng, background_weights, shape_weights) for _ in range(count)]
    images = [source.drawing(rng, scene).image for scene in scenes]
    return images, torch.tensor([scene_labels(scene) for scene in scenes])


class SceneHeads(nn.Module):
    """One linear head per label (shape, colour, background) on pooled vision features."""

    def __init__(self, width: int, label_sizes: Sequence[int] = LABEL_SIZES) -> None:
        super().__init__()
        self.heads = nn.ModuleList(nn.Linear(width, n) for n in label_sizes)

    def forward(self, pooled: torch.Tensor, labels: torch.Tensor) -> ClassifierOutput:
        """Sum of the heads' cross-entropies; ``pooled`` is (batch, width), ``labels`` (batch, heads)."""
        logits = [head(pooled) for head in self.heads]
        losses = [nn.functional.cross_entropy(out, labels[:, i]) for i, out in enumerate(logits)]
        return ClassifierOutput(loss=torch.stack(losses).sum(), logits=logits)


class PooledClassifier(nn.Module):
    """Linear heads on the mean of a vision tower's output tokens, one head per label."""

    def __init__(self, tower: nn.Module, width: int, label_sizes: Sequence[int] = LABEL_SIZES) -> None:
        super().__init__()
        self.tower = tower
        self.heads = SceneHeads(width, label_sizes)

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor) -> ClassifierOutput:
        """Sum of the heads' cross-entropies; ``labels`` is (batch, number of heads)."""
        pooled = self.tower(pixel_values=pixel_values).last_hidden_state.mean(dim=1)
        result: ClassifierOutput = self.heads(pooled, labels)
        return result
