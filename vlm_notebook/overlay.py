"""Draw what a model found on a copy of the picture: boxes from ``detect``, points from ``point``.

>>> boxes = model.detect(picture, "circle")          # [{"x_min": 0.25, ..., "y_max": 0.75}]
>>> overlay(picture, boxes, label="circle")          # a new PIL image; the picture is unchanged
>>> overlay(picture, model.point(picture, "circle"))
>>> overlay(picture, "The box is [16, 16, 48, 48].")  # boxes written in an answer, in pixels

Boxes and points from Moondream are fractions of the picture's width and height (0..1); boxes
written in an answer's text as ``[x1, y1, x2, y2]`` are pixels of the picture. Anything else is
refused with a :class:`~vlm_notebook.errors.RequestError` that says what is expected.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from .errors import RequestError
from .images import load_image

BOX_KEYS = ("x_min", "y_min", "x_max", "y_max")
POINT_KEYS = ("x", "y")
DEFAULT_COLOUR = "#ff00ff"  # magenta: rare in photos and in the shapes pictures alike
_NUMBER = r"\s*(-?\d+(?:\.\d+)?)\s*"
_TEXT_BOX = re.compile(r"\[" + ",".join([_NUMBER] * 4) + r"\]")
_EXPECTED = (
    "a box {'x_min', 'y_min', 'x_max', 'y_max'} (from detect) or a point {'x', 'y'} (from point), "
    "in fractions of the picture's width and height (0 to 1)"
)


@dataclass(frozen=True)
class _Mark:
    """A box (x0, y0, x1, y1) or a point (x, y, x, y) in fractions of the picture."""

    x0: float
    y0: float
    x1: float
    y1: float
    is_point: bool


def overlay(
    image: Any, detections: Any, *, label: str | Sequence[str] | None = None, colour: str = DEFAULT_COLOUR,
) -> Image.Image:
    """A copy of ``image`` with ``detections`` drawn on it, each labelled with ``label`` if given.

    ``detections``: one dict or a list of them (boxes from ``detect``, points from ``point``), or
    an answer's text holding ``[x1, y1, x2, y2]`` boxes in pixels. ``label``: one text for every
    detection, or one per detection.
    """
    picture = load_image(image).convert("RGB").copy()
    marks = _marks(detections, picture.size)
    labels = _labels(label, len(marks))
    draw = ImageDraw.Draw(picture)
    width = max(2, round(min(picture.size) / 100))
    for mark, text in zip(marks, labels, strict=True):
        corner = _draw_mark(draw, mark, picture.size, width, colour)
        if text:
            _draw_label(draw, text, corner, colour)
    return picture


def boxes_in_text(text: str, size: tuple[int, int]) -> list[dict[str, float]]:
    """The ``[x1, y1, x2, y2]`` pixel boxes written in ``text``, as fractions of a picture of ``size``."""
    width, height = size
    found = []
    for match in _TEXT_BOX.finditer(text):
        x0, y0, x1, y1 = (float(value) for value in match.groups())
        if not (0 <= x0 <= width and 0 <= x1 <= width and 0 <= y0 <= height and 0 <= y1 <= height):
            raise RequestError(
                f"The box {match.group(0)} lies outside the {width} x {height} picture: boxes in text are read "
                "as pixels of the picture (a model that answers in another scale needs converting first)."
            )
        found.append({"x_min": x0 / width, "y_min": y0 / height, "x_max": x1 / width, "y_max": y1 / height})
    if not found:
        raise RequestError(f"No box written as [x1, y1, x2, y2] in the text {text[:80]!r}.")
    return found


def _marks(detections: Any, size: tuple[int, int]) -> list[_Mark]:
    if isinstance(detections, str):
        detections = boxes_in_text(detections, size)
    if isinstance(detections, dict):
        detections = [detections]
    if not isinstance(detections, Iterable):
        raise RequestError(f"Detections must be a list of dicts, each {_EXPECTED}; got a {type(detections).__name__}.")
    return [_mark(detection) for detection in detections]


def _mark(detection: Any) -> _Mark:
    if not isinstance(detection, dict):
        raise RequestError(f"Each detection must be {_EXPECTED}; got {detection!r}.")
    if all(key in detection for key in BOX_KEYS):
        x0, y0, x1, y1 = (_fraction(detection, key) for key in BOX_KEYS)
        if x0 > x1 or y0 > y1:
            raise RequestError(f"A box must have x_min <= x_max and y_min <= y_max; got {detection!r}.")
        return _Mark(x0, y0, x1, y1, is_point=False)
    if all(key in detection for key in POINT_KEYS):
        x, y = (_fraction(detection, key) for key in POINT_KEYS)
        return _Mark(x, y, x, y, is_point=True)
    raise RequestError(f"Each detection must be {_EXPECTED}; got {detection!r}, which lacks some of those keys.")


def _fraction(detection: dict[str, Any], key: str) -> float:
    value = detection[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or not 0 <= value <= 1:
        raise RequestError(
            f"{key} must be a number from 0 to 1 (a fraction of the picture's width or height), got {value!r} "
            f"in {detection!r}. For pixel coordinates, divide by the picture's width and height."
        )
    return float(value)


def _labels(label: str | Sequence[str] | None, count: int) -> list[str]:
    if label is None or isinstance(label, str):
        return [label or ""] * count
    labels = list(label)
    if len(labels) != count or not all(isinstance(text, str) for text in labels):
        raise RequestError(f"Give one label for every detection ({count}), or a single label for all; got {label!r}.")
    return labels


def _draw_mark(
    draw: ImageDraw.ImageDraw, mark: _Mark, size: tuple[int, int], width: int, colour: str
) -> tuple[int, int]:
    """Draw a box's outline or a point's dot; return where its label goes (the top-left corner)."""
    x0, y0 = _pixel(mark.x0, size[0]), _pixel(mark.y0, size[1])
    if mark.is_point:
        radius = max(3, round(min(size) / 40))
        draw.ellipse((x0 - radius, y0 - radius, x0 + radius, y0 + radius), fill=colour, outline="white")
        return x0 + radius + 1, y0 - radius
    x1, y1 = _pixel(mark.x1, size[0]), _pixel(mark.y1, size[1])
    draw.rectangle((x0, y0, x1, y1), outline=colour, width=width)
    return x0, y0


def _draw_label(draw: ImageDraw.ImageDraw, text: str, corner: tuple[int, int], colour: str) -> None:
    """``text`` on a coloured band just above ``corner`` (inside the picture when there is no room above)."""
    font = ImageFont.load_default()
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    x, y = corner[0], max(0, corner[1] - (bottom - top) - 2)
    draw.rectangle((x, y, x + right - left + 2, y + bottom - top + 2), fill=colour)
    draw.text((x + 1 - left, y + 1 - top), text, fill="white", font=font)


def _pixel(fraction: float, extent: int) -> int:
    return min(extent - 1, round(fraction * extent))
