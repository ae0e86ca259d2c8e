"""SmolVLM on the shipped `shapes-smolvlm` checkpoint: exact answers, exact streaming, clean faults."""

from __future__ import annotations

import importlib.util
import json
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from holds import held_at_call

from vlm_notebook import CheckpointError, CheckpointNotAvailableError, ImageError, RequestError, shapes
from vlm_notebook.models import SmolVLM

SCENES = shapes.all_scenes()
RED_CIRCLE = shapes.Scene("circle", "red", "white")


def picture(scene: shapes.Scene = RED_CIRCLE):  # type: ignore[no-untyped-def]
    return shapes.draw(scene).image


@pytest.mark.parametrize("prompt", shapes.CAPTION_PROMPTS)
def test_every_scene_is_captioned_exactly(shapes_smolvlm: SmolVLM, prompt: str) -> None:
    wrong = {}
    for scene in SCENES:
        text = shapes_smolvlm.caption(picture(scene), prompt)
        if text != shapes.caption(scene):
            wrong[scene] = text
    assert not wrong, f"{len(wrong)} of {len(SCENES)} captions wrong: {wrong}"


def test_the_default_prompt_is_the_first_caption_prompt(shapes_smolvlm: SmolVLM) -> None:
    assert shapes_smolvlm.caption(picture()) == "A red circle on a white background."


def test_every_question_is_answered_exactly(shapes_smolvlm: SmolVLM) -> None:
    wrong = {}
    for scene in SCENES:
        for question, answer in shapes.questions(scene):
            text = shapes_smolvlm.query(picture(scene), question)
            if text != answer:
                wrong[(scene, question)] = text
    assert not wrong, f"{len(wrong)} answers wrong: {wrong}"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("scene", SCENES[::7], ids=lambda s: f"{s.colour}-{s.shape}-on-{s.background}")
def test_streamed_chunks_join_to_the_non_streamed_text(shapes_smolvlm: SmolVLM, scene: shapes.Scene) -> None:
    for question, _ in [(None, None), *shapes.questions(scene)]:
        if question is None:
            whole, stream = shapes_smolvlm.caption(picture(scene)), shapes_smolvlm.caption(picture(scene), stream=True)
        else:
            whole, stream = shapes_smolvlm.query(picture(scene), question), shapes_smolvlm.query(
                picture(scene), question, stream=True
            )
        chunks = list(stream)
        assert "".join(chunks).encode() == whole.encode()
        assert all(chunks), "no chunk is ever empty"


@pytest.mark.timeout(60)
def test_one_chunk_per_token_for_ascii_text(shapes_smolvlm: SmolVLM) -> None:
    stream = shapes_smolvlm.caption(picture(), stream=True)
    chunks = list(stream)
    assert chunks[0] == "A", "the answer's leading space is dropped"
    assert len(chunks) == stream.stats.tokens - 1, "every token but the end-of-utterance gives one chunk"


@pytest.mark.timeout(60)
def test_japanese_and_emoji_stream_whole_characters(shapes_smolvlm: SmolVLM) -> None:
    stream = shapes_smolvlm.query(picture(), "What colour is the shape? Answer in Japanese.", stream=True)
    chunks = list(stream)
    assert chunks == ["赤", " ", "🔴"], "each chunk completes a character; none is a partial one"
    assert stream.stats.tokens == 1 + 3 + 1 + 4 + 1, "leading space, one token per UTF-8 byte, end-of-utterance"
    assert not any("\ufffd" in chunk for chunk in chunks)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("scene", SCENES[::9], ids=lambda s: f"{s.colour}-{s.shape}")
def test_multibyte_answers_never_show_a_replacement_character(shapes_smolvlm: SmolVLM, scene: shapes.Scene) -> None:
    question, answer = shapes.questions(scene)[-1]
    chunks = list(shapes_smolvlm.query(picture(scene), question, stream=True))
    assert "".join(chunks) == answer
    assert all(chunks) and not any("\ufffd" in chunk for chunk in chunks)


@pytest.mark.timeout(60)
def test_stats_are_present_and_consistent(shapes_smolvlm: SmolVLM) -> None:
    stream = shapes_smolvlm.caption(picture(), stream=True)
    text = stream.wait(30)
    stats = stream.stats
    assert text == "A red circle on a white background."
    assert stats.tiles == 5 and stats.image_tokens == 5 * 16, "four tiles and the whole picture"
    assert stats.prompt_tokens > stats.image_tokens
    assert stats.finish_reason == "stop"
    assert stats.time_to_first_token is not None and stats.end_time is not None
    assert 0 < stats.time_to_first_token <= stats.time_to_first_text <= stats.end_time  # type: ignore[operator]
    assert stats.tokens_per_second and stats.tokens_per_second > 0


@pytest.mark.timeout(60)
def test_max_new_tokens_cuts_the_answer(shapes_smolvlm: SmolVLM) -> None:
    stream = shapes_smolvlm.caption(picture(), stream=True, max_new_tokens=3)
    text = stream.wait(30)
    assert stream.stats.tokens == 3 and stream.stats.finish_reason == "length"
    assert "A red circle on a white background.".startswith(text) and text
    assert shapes_smolvlm.caption(picture(), max_new_tokens=3) == text


@pytest.mark.timeout(60)
def test_cancel_after_three_chunks_ends_within_one_token(shapes_smolvlm: SmolVLM) -> None:
    # The worker makes ~100 tokens a second; hold it before its fourth token until the consumer
    # has cancelled, so the race between the two threads cannot decide the outcome.
    shapes_smolvlm.caption(picture())  # store the picture's work: from here on, output layer call N is token N
    with held_at_call(shapes_smolvlm.model.lm_head, 4) as (_, release):
        stream = shapes_smolvlm.caption(picture(), stream=True)
        chunks = []
        for chunk in stream:
            chunks.append(chunk)
            if len(chunks) == 3:
                stream.cancel()
                release.set()
    assert chunks[:3] == ["A", " red", " circle"]
    assert stream.stats.tokens <= 4 and len(chunks) <= 4, "generation ends at the next token"
    assert stream.stats.finish_reason == "cancelled"
    assert not stream.running, "the worker thread is gone"
    assert not any(thread.name == "vlm-notebook-generate" for thread in threading.enumerate() if thread.is_alive())
    assert shapes_smolvlm.caption(picture()) == "A red circle on a white background."


@pytest.mark.timeout(60)
def test_cancel_before_the_first_token_stops_in_the_prefill(shapes_smolvlm: SmolVLM) -> None:
    with shapes_smolvlm._generation_lock:  # hold the model so the cancel lands before any work
        stream = shapes_smolvlm.caption(picture(), stream=True)
        stream.cancel()
    assert list(stream) == [] and stream.stats.tokens == 0
    assert stream.stats.finish_reason == "cancelled"


@pytest.mark.timeout(60)
def test_an_exception_in_the_forward_pass_reaches_the_consumer(shapes_smolvlm: SmolVLM) -> None:
    calls = 0

    def fail_on_third(module: torch.nn.Module, args: object, output: object) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise RuntimeError("forward failed")

    shapes_smolvlm.caption(picture())  # store the picture's work: from here on, output layer call N is token N
    handle = shapes_smolvlm.model.lm_head.register_forward_hook(fail_on_third)
    try:
        stream = shapes_smolvlm.caption(picture(), stream=True)
        with pytest.raises(RuntimeError, match="forward failed"):
            list(stream)
        assert stream.stats.finish_reason == "error"
        assert stream.text == "A red", "the two tokens before the failure were delivered"
    finally:
        handle.remove()
    assert shapes_smolvlm.caption(picture()) == "A red circle on a white background.", "the model still works"


@pytest.mark.timeout(120)
def test_concurrent_callers_are_served_one_at_a_time(shapes_smolvlm: SmolVLM) -> None:
    scenes = SCENES[:6]
    streams = [shapes_smolvlm.caption(picture(scene), stream=True) for scene in scenes]
    results: dict[int, str] = {}

    def ask(index: int) -> None:
        results[index] = shapes_smolvlm.caption(picture(scenes[index]))

    threads = [threading.Thread(target=ask, args=(index,)) for index in range(len(scenes))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert [stream.wait(60) for stream in streams] == [shapes.caption(scene) for scene in scenes]
    assert [results[index] for index in range(len(scenes))] == [shapes.caption(scene) for scene in scenes]


def test_sampling_with_a_seed_is_repeatable_and_streams_the_same(shapes_smolvlm: SmolVLM) -> None:
    options = {"temperature": 5.0, "top_p": 1.0, "seed": 7, "max_new_tokens": 12}
    first = shapes_smolvlm.caption(picture(), **options)  # type: ignore[arg-type]
    assert shapes_smolvlm.caption(picture(), **options) == first  # type: ignore[arg-type]
    assert "".join(shapes_smolvlm.caption(picture(), stream=True, **options)) == first  # type: ignore[call-overload]


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda m: m.query(picture(), "   "), RequestError, "empty"),
        (lambda m: m.caption(picture(), max_new_tokens=0), RequestError, "at least 1"),
        (lambda m: m.caption(picture(), top_p=0.0), RequestError, "top_p"),
        (lambda m: m.caption(b"not a picture"), ImageError, "not an image"),
        (lambda m: m.caption_with(picture(), options={"length": "short"}), RequestError, "SmolVLM has no caption"),
    ],
    ids=["empty-question", "zero-tokens", "bad-top-p", "not-an-image", "option-of-another-family"],
)
def test_bad_requests_are_refused_and_the_model_keeps_working(shapes_smolvlm, call, error, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error, match=message):
        call(shapes_smolvlm)
    assert shapes_smolvlm.caption(picture()) == "A red circle on a white background."


def test_a_hub_checkpoint_not_in_the_cache_says_how_to_fetch_it() -> None:
    model = SmolVLM("smolvlm-256m")
    with pytest.raises(CheckpointNotAvailableError, match="hf download HuggingFaceTB/SmolVLM-256M-Instruct"):
        model.load()
    assert not model.loaded


def test_a_corrupt_weights_file_is_a_clear_error(tmp_path: Path) -> None:
    copy = tmp_path / "broken"
    shutil.copytree(Path(SmolVLM("shapes-smolvlm").entry.source), copy)
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    model = SmolVLM(str(copy))
    with pytest.raises(CheckpointError, match="weights"):
        model.load()
    assert not model.loaded


def test_a_checkpoint_without_weights_is_a_clear_error(tmp_path: Path) -> None:
    copy = tmp_path / "partial"
    shutil.copytree(Path(SmolVLM("shapes-smolvlm").entry.source), copy)
    (copy / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="weights"):
        SmolVLM(str(copy)).load()


@pytest.mark.skipif(
    importlib.util.find_spec("torchvision") is not None and importlib.util.find_spec("num2words") is not None,
    reason="this environment can build SmolVLM2 processors",
)
def test_a_smolvlm2_checkpoint_without_torchvision_says_what_to_install(tmp_path: Path) -> None:
    copy = tmp_path / "smolvlm2"
    shutil.copytree(Path(SmolVLM("shapes-smolvlm").entry.source), copy)
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "model_type": "smolvlm"}))
    model = SmolVLM(str(copy))
    with pytest.raises(CheckpointError, match=r"SmolVLM2 checkpoint.*torchvision and num2words"):
        model.load()
    assert not model.loaded


def test_the_vision_encoder_gets_contiguous_patches_and_computes_the_same_numbers(shapes_smolvlm: SmolVLM) -> None:
    vision = shapes_smolvlm.model.model.vision_model
    pixels = shapes_smolvlm._inputs(picture(), "Describe this image.")["pixel_values"].flatten(0, 1)
    with torch.inference_mode():
        laid_out = vision(pixel_values=pixels).last_hidden_state
        hooks = dict(vision.embeddings._forward_hooks)
        vision.embeddings._forward_hooks.clear()  # the encoder as transformers lays it out
        try:
            as_transformers = vision(pixel_values=pixels).last_hidden_state
            side = vision.config.image_size // vision.config.patch_size
            patches = vision.embeddings(pixels, torch.ones(pixels.shape[0], side, side, dtype=torch.bool))
        finally:
            vision.embeddings._forward_hooks.update(hooks)
    assert not patches.is_contiguous(), "transformers' patches are a transposed view (else this fix is moot)"
    assert torch.equal(laid_out, as_transformers)


def image_features_both_ways(
    model: SmolVLM, inputs: Any, monkeypatch: pytest.MonkeyPatch | None = None
) -> tuple[Any, Any]:
    """``get_image_features`` as vlm-notebook binds it, and as transformers defines it; with
    ``monkeypatch``, transformers' own fails while vlm-notebook's runs (it must not be needed)."""
    inner = model.model.model
    pixels, mask = inputs["pixel_values"], inputs.get("pixel_attention_mask")
    with torch.inference_mode():
        theirs = type(inner).get_image_features(inner, pixels, mask, return_dict=True)
        if monkeypatch is not None:
            monkeypatch.setattr(type(inner), "get_image_features", None)
        return inner.get_image_features(pixels, mask, return_dict=True), theirs


@pytest.mark.parametrize("with_mask", [True, False], ids=["pixel mask", "no pixel mask"])
def test_whole_tiles_give_transformers_own_image_features(
    shapes_smolvlm: SmolVLM, with_mask: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    tiled = {"do_image_splitting": True, "size": {"longest_edge": 300}}
    inputs = dict(shapes_smolvlm.processor(
        text="User:<image>Describe.", images=[picture()], return_tensors="pt", **tiled
    ))
    assert inputs["pixel_values"].shape[1] > 1, "several tiles"
    if not with_mask:
        del inputs["pixel_attention_mask"]
    ours, theirs = image_features_both_ways(shapes_smolvlm, inputs, monkeypatch)
    assert torch.equal(ours.last_hidden_state, theirs.last_hidden_state)
    assert len(ours.pooler_output) == len(theirs.pooler_output) == 1
    assert torch.equal(ours.pooler_output[0], theirs.pooler_output[0])


def test_padding_tiles_go_to_transformers_own_image_features(shapes_smolvlm: SmolVLM) -> None:
    tiled = {"do_image_splitting": True, "size": {"longest_edge": 300}, "padding": True}
    wide = shapes.draw(shapes.Scene("square", "blue", "white")).image.resize((300, 60))
    inputs = shapes_smolvlm.processor(
        text=["User:<image>Describe."] * 2, images=[[picture()], [wide]], return_tensors="pt", **tiled
    )
    assert not inputs["pixel_values"][1].flatten(1).any(dim=1).all(), "the wide picture has padding tiles"
    ours, theirs = image_features_both_ways(shapes_smolvlm, inputs)
    assert [part.shape for part in ours.pooler_output] == [part.shape for part in theirs.pooler_output]
    assert all(torch.equal(a, b) for a, b in zip(ours.pooler_output, theirs.pooler_output, strict=True))
