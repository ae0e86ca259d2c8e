"""Moondream's object names (``detect``, ``point``) are cleaned as questions are (#21 item 8)."""

from __future__ import annotations

import random

import pytest
from reliability_cases import covers

from vlm_notebook import RequestError, shapes
from vlm_notebook.models import Moondream

RED_CIRCLE = shapes.Scene("circle", "red", "white")


@pytest.fixture(scope="module")
def model() -> Moondream:
    loaded = Moondream("shapes-moondream")
    loaded.load()
    return loaded


@covers("object-control-characters")
@pytest.mark.timeout(120)
def test_control_characters_in_an_object_name_are_dropped_as_in_a_question(model: Moondream) -> None:
    picture = shapes.draw(RED_CIRCLE, rng=random.Random(5)).image  # off-centre: points differ
    encoded = model.encode_image(picture)
    clean = {"detect": model.detect(encoded, "circle"), "point": model.point(encoded, "circle")}
    assert clean["detect"] and clean["point"]
    for dirty in ["ci\x00rcle", "\x1b\x00circle\x07", "circle\r\x00", " \x00circle\x7f "]:
        assert model.detect(encoded, dirty) == clean["detect"], repr(dirty)
        assert model.point(encoded, dirty) == clean["point"], repr(dirty)


@covers("object-control-characters")
def test_an_object_name_of_only_control_characters_is_refused(model: Moondream) -> None:
    with pytest.raises(RequestError, match="Name the object to point"):
        model.point(shapes.draw(RED_CIRCLE).image, "\x00\x07 \r")
    with pytest.raises(RequestError, match="Name the object to detect"):
        model.detect(shapes.draw(RED_CIRCLE).image, 3)  # type: ignore[arg-type]
    assert model.point(shapes.draw(RED_CIRCLE).image, "circle"), "the model still answers"
