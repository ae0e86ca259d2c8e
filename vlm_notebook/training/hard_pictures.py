"""The training pictures a checkpoint finds hardest, to train on more often (issue #22).

A checkpoint that is right on most pictures is right on most of each batch too. Mining draws many
new varied pictures
(:func:`vlm_notebook.training.pictures.varied_drawing`, the training's own ranges and seed, never the
evaluation's), scores each with the network a run starts from, and keeps those with the highest
loss; the run then draws a share of its examples from them (any task, mirrored at random). What it
gave on ``shapes-moondream``: the recipe's ``hard_pictures`` comment cites the runs.
"""

from __future__ import annotations

import heapq
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from vlm_notebook import shapes
from vlm_notebook.training.pictures import mirrored_at_random, varied_drawing

#: A picture and the scene drawn in it.
Picture = tuple[shapes.Scene, shapes.Drawing]
#: Each picture's loss under the network being trained (higher: harder).
Scorer = Callable[[Sequence[Picture]], Sequence[float]]
#: Draws a scene to picture.
SceneDraw = Callable[[random.Random], shapes.Scene]


@dataclass(frozen=True)
class HardPictures:
    """The hardest ``pictures`` of ``scored`` new ones, the loss of the easiest one kept, and the
    seconds mining took."""

    pictures: tuple[Picture, ...]
    scored: int
    lowest_loss: float
    seconds: float

    def draw(self, rng: random.Random) -> Picture:
        """One of the pictures, mirrored at random (every shape stays the same shape)."""
        scene, drawing = rng.choice(self.pictures)
        return scene, mirrored_at_random(rng, drawing)


def mine(
    rng: random.Random, score: Scorer, scored: int, kept: int, pick_scene: SceneDraw,
    small_shapes: float = 0.0, batch_size: int = 32,
) -> HardPictures:
    """The ``kept`` pictures with the highest ``score`` among ``scored`` new varied pictures of
    scenes from ``pick_scene``, a ``small_shapes`` share of them with a small shape."""
    if not 0 < kept <= scored:
        raise ValueError(f"keep between 1 and the {scored} pictures scored, not {kept}")
    started = time.perf_counter()
    heap: list[tuple[float, int, Picture]] = []  # (loss, order drawn, picture): the kept so far, easiest first
    for first in range(0, scored, batch_size):
        batch = [_new_picture(rng, pick_scene, small_shapes) for _ in range(min(batch_size, scored - first))]
        for order, (loss, picture) in enumerate(zip(score(batch), batch, strict=True), start=first):
            item = (float(loss), order, picture)
            if len(heap) < kept:
                heapq.heappush(heap, item)
            else:
                heapq.heappushpop(heap, item)
    hardest = sorted(heap, key=lambda item: item[1])  # in the order drawn, for a repeatable draw
    return HardPictures(
        pictures=tuple(picture for _, _, picture in hardest), scored=scored, lowest_loss=heap[0][0],
        seconds=round(time.perf_counter() - started, 1),
    )


def _new_picture(rng: random.Random, pick_scene: SceneDraw, small_shapes: float) -> Picture:
    scene = pick_scene(rng)
    return scene, varied_drawing(rng, scene, rng.random() < small_shapes)
