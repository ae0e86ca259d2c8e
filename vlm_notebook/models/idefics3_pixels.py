"""SmolVLM's pixels by table: transformers' own Idefics3 PIL preprocessing, the same numbers sooner.

transformers' PIL image processor for Idefics3 (SmolVLM's) resizes a picture and cuts it into tiles
with PIL, then rescales and normalises every tile in NumPy passes (float64, then float32) and copies
them into fresh padded arrays. After the resizing each value depends only on its byte and its
channel, so :func:`pixels_by_table` has the processor rescale and normalise the 256 possible bytes
of each channel once and looks every pixel up in that table: identical pixel values, without the
passes over every tile (``benchmarks/results/picture_preprocessing.md``). Resizing and tiling stay
transformers' (PIL's numbers).
"""

from __future__ import annotations

import types
from typing import Any

import numpy as np
import torch
from transformers.image_processing_utils import BatchFeature
from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

#: What tiling reports beside the pixels when asked (``return_row_col_info``).
_TILING_KEYS = ("rows", "cols")


def pixels_by_table(image_processor: Any) -> None:
    """Have ``image_processor``, if it is transformers' PIL Idefics3 one, compute its pixel values by
    table (the same numbers); any other processor is left as it is."""
    if isinstance(image_processor, Idefics3ImageProcessorPil):
        image_processor._preprocess = types.MethodType(_preprocess_by_table, image_processor)


def _preprocess_by_table(
    processor: Idefics3ImageProcessorPil, images: list[list[Any]], *args: Any, **settings: Any
) -> Any:
    whole = type(processor)._preprocess
    if args or not settings.get("do_pad") or settings.get("return_tensors") != "pt" or not _all_bytes(images):
        return whole(processor, images, *args, **settings)
    tiled = whole(processor, images, **{
        **settings, "do_rescale": False, "do_normalize": False, "do_pad": False, "return_tensors": None,
    })
    tiles: list[list[np.ndarray]] = tiled["pixel_values"]
    pixels, mask = _padded(tiles, _table(processor, settings, channels=tiles[0][0].shape[0]))
    features = BatchFeature({"pixel_values": torch.from_numpy(pixels), "pixel_attention_mask": torch.from_numpy(mask)})
    for key in _TILING_KEYS:
        if key in tiled:
            features[key] = tiled[key]
    return features


def _all_bytes(images: list[list[Any]]) -> bool:
    return bool(images) and all(
        isinstance(image, np.ndarray) and image.dtype == np.uint8 for pictures in images for image in pictures
    )


def _table(processor: Idefics3ImageProcessorPil, settings: dict[str, Any], channels: int) -> np.ndarray:
    """channels x 256: what the processor's rescaling and normalising make of each byte in each channel."""
    every_byte = np.tile(np.arange(256, dtype=np.uint8), (channels, 1, 1))  # a picture 1 high, 256 wide
    if settings["do_rescale"]:
        every_byte = processor.rescale(every_byte, settings["rescale_factor"])
    if settings["do_normalize"]:
        every_byte = processor.normalize(every_byte, settings["image_mean"], settings["image_std"])
    return np.ascontiguousarray(every_byte[:, 0, :])


def _padded(tiles: list[list[np.ndarray]], table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The tiles' looked-up values, padded with zeros as transformers pads (to the most tiles of a
    picture and the largest height and width), and the mask of the values that are not padding."""
    most = max(len(picture) for picture in tiles)
    height = max(tile.shape[1] for picture in tiles for tile in picture)
    width = max(tile.shape[2] for picture in tiles for tile in picture)
    pixels = np.zeros((len(tiles), most, len(table), height, width), dtype=table.dtype)
    mask = np.zeros((len(tiles), most, height, width), dtype=np.int64)
    for index, picture in enumerate(tiles):
        for number, tile in enumerate(picture):
            tall, wide = tile.shape[1:]
            for channel, values in enumerate(tile):  # "clip" never clips 256 entries: it skips a buffered copy
                np.take(table[channel], values, out=pixels[index, number, channel, :tall, :wide], mode="clip")
            mask[index, number, :tall, :wide] = 1
    return pixels, mask
