"""Mining the pictures a checkpoint finds hardest (issue #22): the kept pictures are the highest
scored of those drawn, repeatably, and a run draws the recipe's share of its examples from them."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest

from vlm_notebook import shapes
from vlm_notebook.training import moondream
from vlm_notebook.training.hard_pictures import HardPictures, Picture, mine
from vlm_notebook.training.pictures import Mix, PictureSource, random_scene


def _smallness(pictures: Sequence[Picture]) -> list[float]:
    """A stand-in score (the real one, the shape question's loss, is tested in test_moondream.py):
    the smaller the shape against the picture's short side, the higher."""
    return [min(d.image.size) / ((d.box[2] - d.box[0]) * d.image.width) for _, d in pictures]


def _mined(seed: int, scored: int = 40, kept: int = 5) -> HardPictures:
    return mine(random.Random(seed), _smallness, scored, kept, random_scene, small_shapes=0.5, batch_size=16)


def test_mining_keeps_the_highest_scored_of_the_pictures_drawn_in_the_order_drawn() -> None:
    every = _mined(3, kept=40).pictures
    hardest = sorted(_smallness(every), reverse=True)[:5]
    kept = _mined(3)
    assert sorted(_smallness(kept.pictures), reverse=True) == hardest
    assert kept.lowest_loss == pytest.approx(hardest[-1])
    assert [every.index(picture) for picture in kept.pictures] == sorted(every.index(p) for p in kept.pictures)
    assert (kept.scored, _mined(3).pictures) == (40, kept.pictures), "repeatable from the seed"


def test_mining_refuses_to_keep_more_than_it_scores() -> None:
    with pytest.raises(ValueError, match="keep between 1 and the 10 pictures scored, not 11"):
        _mined(1, scored=10, kept=11)


def test_a_hard_picture_is_drawn_as_mined_or_mirrored_with_its_scene() -> None:
    hard, rng = _mined(4), random.Random(0)
    mined = {(scene, drawing.box) for scene, drawing in hard.pictures}
    mirrored = {(scene, (1 - x1, y0, 1 - x0, y1)) for scene, (x0, y0, x1, y1) in mined}
    drawn = [(scene, drawing.box) for scene, drawing in (hard.draw(rng) for _ in range(40))]
    assert set(drawn) <= mined | mirrored
    assert set(drawn) & mined and set(drawn) & mirrored


def test_a_run_draws_the_recipes_share_from_the_hard_pictures_and_without_them_draws_as_before() -> None:
    hard, source = _mined(5), PictureSource(Mix(canonical=1.0, varied=0.0))
    recipe = moondream.Recipe(hard_fraction=0.3)
    rng = random.Random(6)
    drawn = [moondream.training_picture(rng, source, recipe, hard)[1] for _ in range(1000)]
    from_hard = sum(drawing.image.size != (64, 64) for drawing in drawn)  # the canonical drawings are 64 px
    assert 250 < from_hard < 350
    rng, before = random.Random(7), random.Random(7)
    scenes = [moondream.training_picture(rng, source, recipe)[0] for _ in range(30)]
    assert scenes == [_scene_then_drawing(before, source, recipe) for _ in range(30)]


def _scene_then_drawing(rng: random.Random, source: PictureSource, recipe: moondream.Recipe) -> shapes.Scene:
    """How a run drew a picture before hard pictures existed: the scene, then the drawing."""
    scene = random_scene(rng, recipe.background_weights, recipe.shape_weights)
    source.drawing(rng, scene)
    return scene
