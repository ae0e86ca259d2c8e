"""Overlapping crops of a picture, and stitching the crops' features back into one grid.

Follows ``moondream/torch/image_crops.py`` of github.com/vikhyat/moondream (facts only). The
picture is resized so that a grid of crops, each sharing ``overlap_margin`` patches with its
neighbours, covers it exactly; crop 0 is the whole picture resized to one crop. After the
encoder, each local crop keeps its inner patches (plus the outer margins at the picture's
edges) and the pieces are laid side by side.

Resizing, as in the reference: with libvips (``pyvips``, the optional ``pyvips`` extra) when it
can be imported, with PIL's Lanczos filter otherwise. The two give slightly different pixels.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from .config import VisionConfig


@dataclass(frozen=True)
class Crops:
    """Crops (1 + rows * cols, 3, S, S) scaled to -1..1, global crop first, and their grid."""

    pixels: torch.Tensor
    tiling: tuple[int, int]  # (rows, cols) of local crops


def select_tiling(height: int, width: int, window: int, max_crops: int) -> tuple[int, int]:
    """(rows, cols) of crop windows covering a height x width area, at most ``max_crops``."""
    if height <= window or width <= window:
        return (1, 1)
    min_rows, min_cols = math.ceil(height / window), math.ceil(width / window)
    if min_rows * min_cols > max_crops:
        ratio = math.sqrt(max_crops / (min_rows * min_cols))
        return (max(1, math.floor(min_rows * ratio)), max(1, math.floor(min_cols * ratio)))
    rows = max(math.floor(math.sqrt(max_crops * height / width)), min_rows)
    cols = max(math.floor(math.sqrt(max_crops * width / height)), min_cols)
    if rows * cols > max_crops:
        if cols > rows:
            cols = math.floor(max_crops / rows)
        else:
            rows = math.floor(max_crops / cols)
    return (max(1, rows), max(1, cols))


def overlap_crops(picture: Image.Image, config: VisionConfig) -> Crops:
    """The global crop and the overlapping local crops of an RGB ``picture``."""
    size, margin = config.crop_size, config.enc_patch_size * config.overlap_margin
    window = size - 2 * margin
    tiling = select_tiling(picture.height - 2 * margin, picture.width - 2 * margin, window, config.max_crops)
    rows, cols = tiling
    resized = resize(picture, cols * window + 2 * margin, rows * window + 2 * margin)
    crops = np.zeros((1 + rows * cols, size, size, 3), dtype=np.uint8)
    crops[0] = resize(picture, size, size)
    for row in range(rows):
        for col in range(cols):
            piece = resized[row * window : row * window + size, col * window : col * window + size]
            crops[1 + row * cols + col, : piece.shape[0], : piece.shape[1]] = piece
    pixels = torch.from_numpy(crops).permute(0, 3, 1, 2).to(torch.float32) / 127.5 - 1.0
    return Crops(pixels=pixels, tiling=tiling)


def _import_pyvips() -> Any | None:
    """The ``pyvips`` module, or None when it or the libvips library it needs is missing."""
    try:
        return importlib.import_module("pyvips")
    except (ImportError, OSError):
        return None


#: libvips through pyvips when installed (the reference's choice), else None: PIL resizes.
PYVIPS: Any | None = _import_pyvips()


def resize(picture: Image.Image, width: int, height: int) -> np.ndarray:
    """An RGB picture resized to ``width`` x ``height``, as a (height, width, 3) uint8 array:
    with libvips (:data:`PYVIPS`) when it is there, else with PIL's Lanczos filter."""
    if picture.size == (width, height):
        return np.asarray(picture)
    if PYVIPS is None:
        return np.asarray(picture.resize((width, height), Image.Resampling.LANCZOS))
    image = PYVIPS.Image.new_from_array(np.asarray(picture))
    resized = np.asarray(image.resize(width / picture.width, vscale=height / picture.height).numpy())
    return _fit(resized, width, height)


def _fit(array: np.ndarray, width: int, height: int) -> np.ndarray:
    """Cut or edge-pad ``array`` to exactly height x width (a scale's rounding can be a pixel off)."""
    array = array[:height, :width]
    pad = ((0, height - array.shape[0]), (0, width - array.shape[1]), (0, 0))
    return np.pad(array, pad, mode="edge") if any(after for _, after in pad) else array


def stitch(local: torch.Tensor, tiling: tuple[int, int], margin: int) -> torch.Tensor:
    """Local crop features (n, g, g, D) -> one (h, w, D) grid, overlaps kept once.

    ``margin`` is in grid cells (patches). Each crop gives up its margin on every side that
    touches another crop.
    """
    rows, cols = tiling
    grid, dim = local.shape[1], local.shape[3]
    inner = grid - 2 * margin
    out = local.new_zeros(inner * rows + 2 * margin, inner * cols + 2 * margin, dim)
    for index in range(rows * cols):
        row, col = divmod(index, cols)
        top = 0 if row == 0 else margin
        bottom = grid if row == rows - 1 else grid - margin
        left = 0 if col == 0 else margin
        right = grid if col == cols - 1 else grid - margin
        y, x = row * inner, col * inner
        out[y + top : y + bottom, x + left : x + right] = local[index, top:bottom, left:right]
    return out
