"""``vlm_notebook.overlay``: boxes and points drawn on a copy of the picture, bad detections refused."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vlm_notebook import RequestError, overlay, shapes
from vlm_notebook.models import Moondream
from vlm_notebook.overlay import boxes_in_text

SCENE = shapes.Scene("circle", "red", "white")


@pytest.fixture(scope="module")
def drawing() -> shapes.Drawing:
    return shapes.draw(SCENE, size=128)


@pytest.fixture(scope="module")
def moondream() -> Moondream:
    model = Moondream("shapes-moondream")
    model.load()
    return model


def changed(before: Image.Image, after: Image.Image) -> np.ndarray:
    """Where two pictures of the same size differ (height x width booleans)."""
    difference: np.ndarray = np.asarray(before.convert("RGB")) != np.asarray(after)
    return difference.any(axis=2)


def distance_to_box_edge(size: int, box: dict[str, float]) -> np.ndarray:
    """Each pixel's distance (in pixels) to the outline of ``box`` (fractions) on a square picture."""
    ys, xs = np.mgrid[0:size, 0:size]
    x0, y0, x1, y1 = (box[key] * size for key in ("x_min", "y_min", "x_max", "y_max"))
    inside_x = np.clip(xs, x0, x1)
    inside_y = np.clip(ys, y0, y1)
    outside = np.hypot(xs - inside_x, ys - inside_y)
    inner = np.minimum.reduce([np.abs(xs - x0), np.abs(xs - x1), np.abs(ys - y0), np.abs(ys - y1)])
    within = (xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1)
    result: np.ndarray = np.where(within, inner, outside)
    return result


@pytest.mark.timeout(120)
def test_a_detected_box_is_drawn_on_its_edge_and_nowhere_far_from_it(
    moondream: Moondream, drawing: shapes.Drawing
) -> None:
    original = drawing.image.copy()
    [box] = moondream.detect(drawing.image, "circle")
    drawn = overlay(drawing.image, [box])
    assert drawn is not drawing.image and drawn.size == drawing.image.size
    assert drawing.image.tobytes() == original.tobytes()  # the picture itself is unchanged
    where = changed(original, drawn)
    distance = distance_to_box_edge(drawn.width, box)
    assert where[distance <= 0.5].mean() > 0.9  # the outline covers the box's edge
    assert not where[distance > 4].any()  # and nothing farther than its width


@pytest.mark.timeout(120)
def test_a_label_is_written_at_the_boxs_corner(moondream: Moondream, drawing: shapes.Drawing) -> None:
    [box] = moondream.detect(drawing.image, "circle")
    plain, labelled = overlay(drawing.image, box), overlay(drawing.image, [box], label="circle")
    extra = changed(plain, labelled)
    ys, xs = np.nonzero(extra)
    assert xs.size > 20
    corner_x, corner_y = box["x_min"] * drawing.image.width, box["y_min"] * drawing.image.height
    assert abs(xs.min() - corner_x) <= 2 and ys.max() <= corner_y + 2  # just above the top-left corner


@pytest.mark.timeout(120)
def test_a_point_is_drawn_where_the_model_points(moondream: Moondream, drawing: shapes.Drawing) -> None:
    [point] = moondream.point(drawing.image, "circle")
    where = changed(drawing.image, overlay(drawing.image, [point], label="circle"))
    x, y = round(point["x"] * drawing.image.width), round(point["y"] * drawing.image.height)
    assert where[y, x]
    ys, xs = np.nonzero(where)
    assert np.hypot(xs - x, ys - y).min() == 0 and not where[: y - 20].any()


def test_boxes_written_in_an_answer_are_read_as_pixels(drawing: shapes.Drawing) -> None:
    answer = "The circle is at [32, 32, 96, 96]."
    assert boxes_in_text(answer, drawing.image.size) == [{"x_min": 0.25, "y_min": 0.25, "x_max": 0.75, "y_max": 0.75}]
    assert changed(drawing.image, overlay(drawing.image, answer))[32, 64]
    with pytest.raises(RequestError, match="outside the 128 x 128 picture"):
        overlay(drawing.image, "[0, 0, 500, 500]")
    with pytest.raises(RequestError, match=r"No box written as \[x1, y1, x2, y2\]"):
        overlay(drawing.image, "no boxes here")


@pytest.mark.parametrize(
    ("detections", "message"),
    [
        ([{"x_min": 0.1, "y_min": 0.1, "x_max": 1.5, "y_max": 0.5}], "x_max must be a number from 0 to 1"),
        ([{"x": -0.1, "y": 0.5}], "x must be a number from 0 to 1"),
        ([{"x_min": 0.1, "y_min": 0.1}], "lacks some of those keys"),
        ([{"x": "0.5", "y": 0.5}], "x must be a number from 0 to 1"),
        ([{"x": True, "y": 0.5}], "x must be a number from 0 to 1"),
        ([{"x": float("nan"), "y": 0.5}], "x must be a number from 0 to 1"),
        ([{"x_min": 0.6, "y_min": 0.1, "x_max": 0.5, "y_max": 0.5}], "x_min <= x_max"),
        ([(0.1, 0.2, 0.3, 0.4)], "Each detection must be a box"),
        (42, "Detections must be a list of dicts"),
    ],
)
def test_bad_detections_are_refused_with_what_is_expected(
    drawing: shapes.Drawing, detections: object, message: str
) -> None:
    with pytest.raises(RequestError, match=message):
        overlay(drawing.image, detections)


def test_labels_must_match_the_detections(drawing: shapes.Drawing) -> None:
    points = [{"x": 0.2, "y": 0.2}, {"x": 0.8, "y": 0.8}]
    assert overlay(drawing.image, points, label=["a", "b"]).size == drawing.image.size
    with pytest.raises(RequestError, match="one label for every detection"):
        overlay(drawing.image, points, label=["a"])
