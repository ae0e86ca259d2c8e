"""Pictures and checks the reliability tests share."""

from __future__ import annotations

import io
import threading

from PIL import Image

from vlm_notebook import shapes
from vlm_notebook.models.base import VLM

RED_CIRCLE = shapes.Scene("circle", "red", "white")
RED_CAPTION = "A red circle on a white background."


def picture(scene: shapes.Scene = RED_CIRCLE) -> Image.Image:
    return shapes.draw(scene).image


def encoded(image: Image.Image, fmt: str = "PNG", **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def generate_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "vlm-notebook-generate" and thread.is_alive()]


def assert_still_answers(model: VLM) -> None:
    """The same loaded model answers a good request exactly, streamed and not, and leaves no worker behind."""
    assert model.loaded
    caption = model.caption_with(picture())
    assert caption == RED_CAPTION, f"after the fault the model answered {caption!r}"
    stream = model.caption_with(picture(), stream=True)
    assert not isinstance(stream, str)
    assert "".join(stream) == RED_CAPTION and stream.stats.finish_reason == "stop"
    assert not generate_threads(), "no generation thread is left running"
