"""Qwen2-VL on the shipped `shapes-qwen2vl` checkpoint: exact captions in all seven languages offered,
exact answers in English and Japanese,
whole-character Japanese streaming, picture-size control, and clean refusals."""

from __future__ import annotations

import importlib.util

import pytest

from vlm_notebook import CheckpointError, RequestError, shapes
from vlm_notebook.languages import CAPTION_PROMPTS
from vlm_notebook.models import Qwen2VL, SmolVLM
from vlm_notebook.models.qwen2vl import DEFAULT_MAX_PIXELS
from vlm_notebook.registry import get_model, resolve

SCENES = shapes.all_scenes()
RED_CIRCLE = shapes.Scene("circle", "red", "white")


def picture(scene: shapes.Scene = RED_CIRCLE):  # type: ignore[no-untyped-def]
    return shapes.draw(scene).image


def test_every_offered_caption_language_is_trained_with_the_prompt_it_is_asked_with() -> None:
    assert tuple(CAPTION_PROMPTS) == shapes.CAPTION_LANGUAGES
    for language in shapes.CAPTION_LANGUAGES:
        assert CAPTION_PROMPTS[language] == shapes.caption_prompts(language)[0]


@pytest.mark.parametrize("language", shapes.CAPTION_LANGUAGES)
def test_every_scene_is_captioned_exactly_in_each_language(shapes_qwen2vl: Qwen2VL, language: str) -> None:
    wrong = {}
    for scene in SCENES:
        text = shapes_qwen2vl.caption(picture(scene), language=language)
        if text != shapes.caption(scene, language):
            wrong[scene] = text
    assert not wrong, f"{len(wrong)} of {len(SCENES)} {language} captions wrong: {wrong}"


@pytest.mark.parametrize("language", shapes.LANGUAGES)
def test_every_question_is_answered_exactly_in_the_language_asked(shapes_qwen2vl: Qwen2VL, language: str) -> None:
    wrong = {}
    for scene in SCENES:
        for question, answer in shapes.questions(scene, language):
            text = shapes_qwen2vl.query(picture(scene), question)
            if text != answer:
                wrong[(scene, question)] = text
    assert not wrong, f"{len(wrong)} {language} answers wrong: {wrong}"


def test_the_default_caption_language_is_english(shapes_qwen2vl: Qwen2VL) -> None:
    assert shapes_qwen2vl.caption(picture()) == "A red circle on a white background."


@pytest.mark.timeout(120)
@pytest.mark.parametrize("scene", SCENES[::7], ids=lambda s: f"{s.colour}-{s.shape}-on-{s.background}")
def test_japanese_streams_whole_characters_that_join_to_the_text(shapes_qwen2vl: Qwen2VL, scene: shapes.Scene) -> None:
    requests = [("caption", None)] + [("query", q) for q, _ in shapes.questions(scene, "ja")]
    for kind, question in requests:
        if question is None:
            whole = shapes_qwen2vl.caption(picture(scene), language="ja")
            stream = shapes_qwen2vl.caption(picture(scene), language="ja", stream=True)
        else:
            whole = shapes_qwen2vl.query(picture(scene), question)
            stream = shapes_qwen2vl.query(picture(scene), question, stream=True)
        chunks = list(stream)
        assert "".join(chunks).encode() == whole.encode(), f"{kind} {question}: chunks differ from the text"
        assert all(chunks), "no chunk is ever empty"
        assert not any("\ufffd" in chunk for chunk in chunks), "a chunk ends inside a character"
        assert chunks == list(whole), "each Japanese character (3 byte tokens) arrives as one chunk"
        assert stream.stats.tokens == len(whole.encode()) + 1, "one token per UTF-8 byte, then <|im_end|>"


@pytest.mark.timeout(60)
def test_english_streams_one_chunk_per_token(shapes_qwen2vl: Qwen2VL) -> None:
    stream = shapes_qwen2vl.caption(picture(), stream=True)
    chunks = list(stream)
    assert "".join(chunks) == "A red circle on a white background."
    assert chunks[0] == "A" and len(chunks) == stream.stats.tokens - 1, "every token but <|im_end|> is a chunk"


@pytest.mark.timeout(60)
def test_stats_count_the_image_tokens(shapes_qwen2vl: Qwen2VL) -> None:
    stream = shapes_qwen2vl.caption(picture(), language="ja", stream=True)
    assert stream.wait(30) == "白い背景に赤い円。"
    assert stream.stats.image_tokens == 64, "64 x 64 pixels grow to 224 x 224 (min_pixels), patch 14, merge 2"
    assert stream.stats.prompt_tokens > stream.stats.image_tokens
    assert stream.stats.finish_reason == "stop"


def test_the_checkpoint_keeps_its_own_smaller_picture_size(shapes_qwen2vl: Qwen2VL) -> None:
    assert shapes_qwen2vl.pixel_range == (64 * 28 * 28, 240 * 28 * 28), "never above the checkpoint's own cap"


@pytest.mark.timeout(60)
def test_max_pixels_decides_the_number_of_image_tokens() -> None:
    model = Qwen2VL("shapes-qwen2vl", max_pixels=DEFAULT_MAX_PIXELS)
    photo = picture().resize((640, 480))
    stream = model.query(photo, "What shape is it?", stream=True, max_new_tokens=1)
    stream.wait(30)
    assert model.pixel_range == (64 * 28 * 28, DEFAULT_MAX_PIXELS)
    assert 200 <= stream.stats.image_tokens <= 256, "the default cap keeps a photo near 256 image tokens"


def test_an_unknown_language_is_refused_with_the_known_ones(shapes_qwen2vl: Qwen2VL) -> None:
    with pytest.raises(RequestError, match="known languages: en, ja, zh, ko, fr, de, es"):
        shapes_qwen2vl.caption(picture(), language="klingon")


def test_a_smolvlm_only_option_is_refused(shapes_qwen2vl: Qwen2VL) -> None:
    with pytest.raises(RequestError, match="no caption option prompt; its options: language"):
        shapes_qwen2vl.caption_with(picture(), options={"prompt": "Describe this image."})
    assert shapes_qwen2vl.caption_with(picture(), options={"language": "ja"}) == "白い背景に赤い円。"


@pytest.mark.parametrize("pixels", [{"max_pixels": 0}, {"min_pixels": 100}, {"min_pixels": 5000, "max_pixels": 4000}])
def test_bad_picture_sizes_are_refused_before_loading(pixels: dict[str, int]) -> None:
    with pytest.raises(RequestError, match="pixels"):
        Qwen2VL("shapes-qwen2vl", **pixels)


def test_qwen_names_resolve_to_the_published_checkpoints() -> None:
    assert resolve("qwen2-vl-2b").source == "Qwen/Qwen2-VL-2B-Instruct"
    assert resolve("qwen2-vl-7b").source == "Qwen/Qwen2-VL-7B-Instruct"
    assert resolve("qwen2.5-vl-3b").source == "Qwen/Qwen2.5-VL-3B-Instruct"
    assert resolve("qwen2.5-vl-7b").source == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert Qwen2VL().name == "qwen2-vl-2b"
    assert isinstance(get_model("shapes-qwen2vl"), Qwen2VL)


def test_the_checkpoint_is_not_a_smolvlm() -> None:
    with pytest.raises(CheckpointError, match=r"qwen2vl model, not smolvlm: load it with Qwen2VL"):
        SmolVLM("shapes-qwen2vl")


def test_the_processor_needs_no_video_part(shapes_qwen2vl: Qwen2VL) -> None:
    """Without torchvision the PIL image processor and no video part; with it (make test-torchvision),
    the torchvision image processor that transformers' own ``AutoProcessor`` picks."""
    has_torchvision = importlib.util.find_spec("torchvision") is not None
    expected = "Qwen2VLImageProcessor" if has_torchvision else "Qwen2VLImageProcessorPil"
    assert shapes_qwen2vl.processor.image_processor.__class__.__name__ == expected
