"""What a model is asked (``vlm_notebook.request``) and how ``caption`` reads a family's options."""

from __future__ import annotations

import pytest
from PIL import Image

from vlm_notebook import RequestError, shapes
from vlm_notebook.caption_options import read
from vlm_notebook.models import Moondream, Qwen2VL
from vlm_notebook.request import Request

RED_CIRCLE = shapes.Scene("circle", "red", "white")


def picture() -> Image.Image:
    return shapes.draw(RED_CIRCLE).image


def test_a_request_asks_its_question_or_what_its_caption_options_pick() -> None:
    assert Request(picture(), "What shape?").text("Describe this image.") == "What shape?"
    assert Request(picture()).text("Describe this image.") == "Describe this image."
    assert Request(picture(), caption={"language": "ja"}).text("-") == "この画像を説明してください。"
    assert Request(picture(), caption={"prompt": "List the colours."}).text("-") == "List the colours."


def test_chat_templates_see_a_placeholder_for_the_picture_and_servers_the_picture() -> None:
    image = picture()
    history = ({"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "Shape?"}]},
               {"role": "assistant", "content": "A circle."})
    request = Request(image, "Colour?", history=history)
    template = request.template_messages("-")
    assert template[0]["content"][0] == {"type": "image"}
    assert template[-1]["content"] == [{"type": "text", "text": "Colour?"}]
    assert request.api_messages("-")[0]["content"][0]["image"] is image
    assert history[0]["content"][0]["image"] is image, "the history itself is left as it was"


def test_caption_options_come_by_position_in_the_familys_order_or_by_name() -> None:
    assert read("Remote", ("prompt", "language"), ("Say it.",), {}) == {"prompt": "Say it."}
    assert read("Remote", ("prompt", "language"), (None, "ja"), {}) == {"language": "ja"}, "no prompt: the language's"
    assert read("Remote", ("prompt", "language"), (), {"language": None}) == {}, "alternatives: None is not given"
    with pytest.raises(RequestError, match="Unknown caption language None"):
        read("Qwen2VL", ("language",), (None,), {})
    with pytest.raises(RequestError, match="got prompt twice"):
        read("Remote", ("prompt", "language"), ("Say it.",), {"prompt": "Say it again."})
    with pytest.raises(RequestError, match=r"takes 1 option\(s\) after the image \(length\), got 2 values"):
        read("Moondream", ("length",), ("short", "long"), {})
    with pytest.raises(RequestError, match="not both"):
        read("Remote", ("prompt", "language"), ("Say it.", "ja"), {})


@pytest.mark.timeout(120)
def test_the_base_caption_takes_each_familys_options_as_before(
    shapes_moondream: Moondream, shapes_qwen2vl: Qwen2VL
) -> None:
    short = shapes_moondream.caption(picture(), length="short")
    assert shapes_moondream.caption(picture(), "short") == short == "A red circle."
    japanese = shapes_qwen2vl.caption(picture(), language="ja")
    assert shapes_qwen2vl.caption(picture(), "ja") == japanese == "白い背景に赤い円。"
    with pytest.raises(RequestError, match="Unknown caption length 'huge': use one of short, normal, long"):
        shapes_moondream.caption(picture(), "huge")
