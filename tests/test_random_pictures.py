"""Pictures as users send them (issue #22): any aspect ratio from 1:3 to 3:1, the shape small or large
anywhere, PNG, JPEG quality 60 or RGBA. The generator is exact and repeatable, and each shipped
checkpoint is right on seeded random pictures at least as often as measured (the model cards give
the rate on 200 of them; the issue's goal, 99%, is not reached yet: raise the floors with the rates)."""

from __future__ import annotations

import io
import random

import pytest
from PIL import Image

from vlm_notebook import shapes
from vlm_notebook.images import load_image
from vlm_notebook.registry import get_model
from vlm_notebook.training import robustness
from vlm_notebook.training.pictures import Mix, PictureSource, random_scene

TEST_SEED = 2026  # not the cards' seed (robustness.DEFAULT_SEED): these pictures were never looked at
TEST_PICTURES = 100
#: Pictures of the 100 each shipped checkpoint gets right: the fewer of fp32 and bf16 as measured
#: (greedy decoding is deterministic), less one for another CPU's rounding; Gemma 4 measured on an
#: Intel Xeon with AVX512_BF16 (100 in both formats), SmolVLM, Qwen2-VL and Moondream on an AMD Zen 5
#: with AVX512_BF16 (100, 98 and 96 in both).
MIN_RIGHT = {"shapes-smolvlm": 99, "shapes-qwen2vl": 97, "shapes-moondream": 95, "shapes-gemma4": 99}


def test_random_pictures_are_repeatable_and_within_the_ranges() -> None:
    first = [shapes.random_picture(random.Random(7)) for _ in range(2)]
    assert first[0] == first[1], "the same seed, the same picture and bytes"
    rng = random.Random(3)
    formats = set()
    for _ in range(60):
        picture = shapes.random_picture(rng)
        width, height = picture.size
        assert 1 / 3 - 0.01 <= width / height <= 3 + 0.01
        assert 48 <= min(width, height) <= 256
        x0, y0, x1, y1 = picture.box
        assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
        side = (x1 - x0) * width / min(width, height)
        assert 0.25 <= side <= 0.60 and (y1 - y0) * height == pytest.approx((x1 - x0) * width)
        image = Image.open(io.BytesIO(picture.data))
        assert image.size == picture.size and image.format == ("JPEG" if picture.format == "JPEG" else "PNG")
        assert image.mode == ("RGBA" if picture.format == "RGBA" else "RGB")
        formats.add(picture.format)
    assert formats == {"PNG", "JPEG", "RGBA"}


def _find(scene: shapes.Scene, picture_format: str) -> shapes.RandomPicture:
    rng = random.Random(0)
    while True:
        picture = shapes.random_picture(rng, scene)
        if picture.format == picture_format:
            return picture


def test_the_shape_is_drawn_where_the_box_says_in_its_colour() -> None:
    for scene in shapes.all_scenes()[::5]:
        picture = _find(scene, "PNG")
        image = load_image(picture.data)
        width, height = picture.size
        x0, y0, x1, y1 = picture.box
        centre = image.getpixel((int((x0 + x1) / 2 * width), int((y0 + y1) / 2 * height)))
        corner = (0, 0) if x0 * width > 2 or y0 * height > 2 else (width - 1, height - 1)
        assert centre == shapes._RGB[scene.colour]
        assert image.getpixel(corner) == shapes._RGB[scene.background]
        assert picture.contains((x0 + x1) / 2, (y0 + y1) / 2)
        assert picture.contains(x0, y0) == (scene.shape == "square"), "a box corner is inside a square only"


def test_an_rgba_picture_of_a_white_background_is_transparent_and_reads_as_white() -> None:
    picture = _find(shapes.Scene("circle", "red", "white"), "RGBA")
    stored = picture.image
    assert stored.getpixel((0, 0)) == (0, 0, 0, 0) or stored.getpixel((stored.width - 1, stored.height - 1))[3] == 0
    seen = load_image(picture.data)
    width, height = picture.size
    x0, y0, x1, y1 = picture.box
    assert seen.getpixel((int((x0 + x1) / 2 * width), int((y0 + y1) / 2 * height))) == shapes._RGB["red"]
    corner = (0, 0) if x0 * width > 2 or y0 * height > 2 else (width - 1, height - 1)
    assert seen.getpixel(corner) == (255, 255, 255)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", list(MIN_RIGHT))
def test_the_shipped_checkpoints_are_right_on_random_pictures(name: str) -> None:
    result = robustness.evaluate(get_model(name), TEST_PICTURES, TEST_SEED)
    assert result["right"] >= MIN_RIGHT[name], f"{name}: {result['right']}/{TEST_PICTURES} right: {result['failures']}"


def test_the_square_around_the_shape_keeps_its_pixels_and_box() -> None:
    """What the diagnosis of a miss asks again: the same pixels, not squeezed, the box moved along."""
    rng = random.Random(5)
    for _ in range(30):
        picture = shapes.random_picture(rng)
        square = robustness.square_around_shape(picture)
        width, height = picture.size
        side = min(width, height)
        assert square.size == (side, side) and square.format == "PNG" and square.scene == picture.scene
        x0, y0, x1, y1 = square.box
        assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1, "the whole shape is in the square"
        assert (x1 - x0) * side == pytest.approx((picture.box[2] - picture.box[0]) * width), "not resized"
        centre = (int((x0 + x1) / 2 * side), int((y0 + y1) / 2 * side))
        left = round((x0 * side) - picture.box[0] * width) * -1
        top = round((y0 * side) - picture.box[1] * height) * -1
        original = load_image(picture.data).getpixel((left + centre[0], top + centre[1]))
        assert load_image(square.data).getpixel(centre) == original


def test_a_training_mix_of_small_shapes_draws_only_small_shapes_on_varied_pictures() -> None:
    def sides(small_shapes: float) -> list[float]:
        source, rng = PictureSource(Mix(canonical=0.0, varied=1.0, small_shapes=small_shapes)), random.Random(4)
        drawings = [source.drawing(rng, rng.choice(shapes.all_scenes())) for _ in range(40)]
        return [(d.box[2] - d.box[0]) * d.image.width / min(d.image.size) for d in drawings]

    assert all(0.19 <= side <= 0.41 for side in sides(1.0))
    assert max(sides(0.0)) > 0.45, "the usual varied pictures go up to 70% of the short side"


def test_background_weights_draw_the_backgrounds_in_proportion_and_equal_weights_draw_as_before() -> None:
    drawn = [random_scene(random.Random(seed), (1, 1, 2)).background for seed in range(2000)]
    assert 0.45 < drawn.count("gray") / len(drawn) < 0.55
    assert 0.2 < drawn.count("white") / len(drawn) < 0.3
    rng, before = random.Random(3), random.Random(3)
    assert [random_scene(rng, (2, 2, 2)) for _ in range(50)] == [before.choice(shapes.all_scenes()) for _ in range(50)]


def test_shape_weights_multiply_the_background_weights_and_even_shapes_draw_as_before() -> None:
    drawn = [random_scene(random.Random(seed), (1, 1, 2), (2, 1, 1, 2)) for seed in range(3000)]
    circles_on_gray = sum(scene.shape == "circle" and scene.background == "gray" for scene in drawn)
    assert 0.14 < circles_on_gray / len(drawn) < 0.19, "2/6 of the shapes times 2/4 of the backgrounds: 1/6"
    assert 0.12 < sum(scene.shape == "square" for scene in drawn) / len(drawn) < 0.21
    rng, before = random.Random(5), random.Random(5)
    assert [random_scene(rng, (1, 1, 2), (3, 3, 3, 3)) for _ in range(50)] == [
        random_scene(before, (1, 1, 2)) for _ in range(50)
    ]
