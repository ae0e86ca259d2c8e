"""Training pictures for the ``shapes-*`` checkpoints, shared by the three families.

A mix of canonical drawings (centred, half the side: what the exact-answer tests show), square
drawings with the shape placed at random, and varied pictures like users send (issue #22):
any aspect ratio, size and position, JPEG at any quality, pixel noise, transparent backgrounds.
Varied pictures are encoded, then decoded with :func:`vlm_notebook.images.load_image`, the
function every model runs on a user's picture, so training sees exactly what inference sees.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, replace

from PIL import Image

from vlm_notebook import shapes
from vlm_notebook.images import load_image

#: Wider than the evaluation's ranges (:data:`shapes.RANDOM`) so its edges are not the training's.
VARIED = shapes.RandomSettings(
    aspect=(0.3, 3.3),
    short_side=(32, 192),  # the models see 64-112 px: larger pictures would only cost time to draw
    shape_fraction=(0.2, 0.7),
    formats=("PNG", "JPEG", "RGBA"),
    jpeg_quality=(30, 95),
    noise=(0.0, 8.0),
)

#: Varied pictures with a small shape, where the models miss most (issue #22: on elongated pictures).
SMALL_SHAPES = replace(VARIED, shape_fraction=(0.2, 0.4))


@dataclass(frozen=True)
class Mix:
    """Fractions of canonical drawings and of varied pictures (the rest: random squares), how
    many varied pictures of each scene are drawn (then reused, mirrored at random: drawing and
    encoding one takes about 10 ms, longer than a training step spends on it), and the fraction of
    varied pictures drawn from :data:`SMALL_SHAPES` rather than :data:`VARIED`."""

    canonical: float = 0.15
    varied: float = 0.6
    varied_per_scene: int = 40
    small_shapes: float = 0.0


#: The mix the recipes use unless told otherwise.
DEFAULT_MIX = Mix()


class PictureSource:
    """Training drawings in the proportions of a :class:`Mix`; ``size`` is the side of the squares."""

    def __init__(self, mix: Mix = DEFAULT_MIX, size: int = 64):
        self.mix, self.size = mix, size
        self._varied: dict[tuple[shapes.Scene, bool], list[shapes.Drawing]] = {}

    def drawing(self, rng: random.Random, scene: shapes.Scene) -> shapes.Drawing:
        """A canonical drawing, a varied picture or a random square, drawn with ``rng``."""
        draw = rng.random()
        if draw < self.mix.canonical:
            return shapes.draw(scene, self.size)
        if draw < self.mix.canonical + self.mix.varied:
            return self._varied_drawing(rng, scene)
        return shapes.draw(scene, self.size, rng)

    def _varied_drawing(self, rng: random.Random, scene: shapes.Scene) -> shapes.Drawing:
        # no draw at 0, so a mix without small shapes draws the pictures it drew before they existed
        small = self.mix.small_shapes > 0 and rng.random() < self.mix.small_shapes
        pool = self._varied.setdefault((scene, small), [])
        if len(pool) < self.mix.varied_per_scene:
            pool.append(varied_drawing(rng, scene, small))
            return pool[-1]
        return mirrored_at_random(rng, rng.choice(pool))


def varied_drawing(rng: random.Random, scene: shapes.Scene, small: bool = False) -> shapes.Drawing:
    """A new varied picture of ``scene`` (from :data:`SMALL_SHAPES` when ``small``, else
    :data:`VARIED`), encoded and decoded as a user's file is."""
    picture = shapes.random_picture(rng, scene, SMALL_SHAPES if small else VARIED)
    return shapes.Drawing(image=load_image(picture.data), box=picture.box)


#: Every background as often as the others (``shapes.BACKGROUNDS``): the evaluation's draw.
EVEN_BACKGROUNDS: tuple[float, float, float] = (1, 1, 1)
#: Every shape as often as the others (``shapes.SHAPES``): the evaluation's draw.
EVEN_SHAPES: tuple[float, float, float, float] = (1, 1, 1, 1)


def random_scene(
    rng: random.Random,
    background_weights: Sequence[float] = EVEN_BACKGROUNDS,
    shape_weights: Sequence[float] = EVEN_SHAPES,
) -> shapes.Scene:
    """A scene drawn with each background (``shapes.BACKGROUNDS``) and each shape (``shapes.SHAPES``)
    in proportion to its weight (a scene's weight is the product of the two); equal weights draw as
    :func:`random.Random.choice` does, the same scenes as before weights existed."""
    scenes = shapes.all_scenes()
    if len(set(background_weights)) == 1 and len(set(shape_weights)) == 1:
        return rng.choice(scenes)
    weights = [
        background_weights[shapes.BACKGROUNDS.index(scene.background)] * shape_weights[shapes.SHAPES.index(scene.shape)]
        for scene in scenes
    ]
    return rng.choices(scenes, weights)[0]


def mirrored_at_random(rng: random.Random, drawing: shapes.Drawing) -> shapes.Drawing:
    """The drawing as it is or mirrored, each half the time: how a reused picture is shown again."""
    return mirrored(drawing) if rng.random() < 0.5 else drawing


def mirrored(drawing: shapes.Drawing) -> shapes.Drawing:
    """The drawing flipped left to right (every shape stays the same shape)."""
    x0, y0, x1, y1 = drawing.box
    return shapes.Drawing(image=drawing.image.transpose(Image.Transpose.FLIP_LEFT_RIGHT), box=(1 - x1, y0, 1 - x0, y1))
