"""Pixels by table (``models/idefics3_pixels.py``): exactly what transformers' PIL Idefics3 processor gives."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor

from vlm_notebook import registry, shapes
from vlm_notebook.models import Qwen2VL, SmolVLM
from vlm_notebook.models.idefics3_pixels import pixels_by_table

DIRECTORY = registry.CHECKPOINTS_DIR / "shapes-smolvlm"
PROMPT = "User:<image>What is it?<end_of_utterance>\nAssistant:"
#: The shipped processor's own sizes (one 128 px picture), and tiles of 128 px from a longest edge of 512.
SIZES = {"own": {}, "tiles": {"do_image_splitting": True, "size": {"longest_edge": 512}}}


@pytest.fixture(scope="module")
def processors() -> tuple[Any, Any]:
    """transformers' processor of the shipped checkpoint as loaded, and the same by table."""
    by_table = AutoProcessor.from_pretrained(DIRECTORY)
    pixels_by_table(by_table.image_processor)
    return AutoProcessor.from_pretrained(DIRECTORY), by_table


def photo(width: int, height: int, mode: str = "RGB") -> Image.Image:
    """A picture with every byte value in it (noise), in ``mode``."""
    values = np.random.default_rng(width * height).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(values).convert(mode)


def assert_identical(expected: Any, got: Any) -> None:
    assert got.keys() == expected.keys()
    for key in expected:
        assert got[key].dtype == expected[key].dtype, key
        assert torch.equal(got[key], expected[key]), key


@pytest.mark.parametrize("sizes", SIZES.values(), ids=SIZES.keys())
@pytest.mark.parametrize(
    "picture",
    [photo(640, 480), photo(300, 700), photo(7, 90), photo(64, 64, "L"), photo(200, 100, "RGBA"),
     shapes.draw(shapes.Scene("circle", "red", "white")).image],
    ids=["landscape", "portrait", "sliver", "grey", "transparent", "shape"],
)
def test_the_processor_gives_transformers_own_numbers(
    processors: tuple[Any, Any], picture: Image.Image, sizes: dict[str, Any]
) -> None:
    plain, by_table = processors
    expected = plain(text=PROMPT, images=[picture], return_tensors="pt", **sizes)
    assert_identical(expected, by_table(text=PROMPT, images=[picture], return_tensors="pt", **sizes))


def test_pictures_with_fewer_tiles_are_padded_as_transformers_pads(processors: tuple[Any, Any]) -> None:
    plain, by_table = processors
    pictures = [[photo(900, 200)], [photo(500, 500)]]
    settings: dict[str, Any] = {"return_tensors": "pt", "padding": True, **SIZES["tiles"]}
    expected = plain(text=[PROMPT, PROMPT], images=pictures, **settings)
    assert expected["pixel_attention_mask"][0].sum(dim=(1, 2)).eq(0).any(), "the first picture has fewer tiles"
    assert_identical(expected, by_table(text=[PROMPT, PROMPT], images=pictures, **settings))


def test_without_tensors_it_is_transformers_own_call(processors: tuple[Any, Any]) -> None:
    plain, by_table = processors
    expected = plain.image_processor([photo(40, 30)], return_tensors=None)
    got = by_table.image_processor([photo(40, 30)], return_tensors=None)
    assert np.array_equal(np.asarray(got["pixel_values"]), np.asarray(expected["pixel_values"]))


def test_other_image_processors_are_left_alone(shapes_qwen2vl: Qwen2VL) -> None:
    pixels_by_table(shapes_qwen2vl.processor.image_processor)
    assert "_preprocess" not in vars(shapes_qwen2vl.processor.image_processor)


def test_smolvlm_loads_its_processor_by_table(shapes_smolvlm: SmolVLM) -> None:
    assert "_preprocess" in vars(shapes_smolvlm.processor.image_processor)
