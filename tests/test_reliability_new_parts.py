"""Bad input and faults around the parts added after the first reliability round: devices,
conversations, the generic family and overlays. After each, the same model answers exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from reliability_cases import covers

from vlm_notebook import CheckpointError, DeviceError, RequestError, get_model, overlay, shapes
from vlm_notebook.models import SmolVLM

RED_CIRCLE = shapes.Scene("circle", "red", "white")
CAPTION = "A red circle on a white background."


def picture() -> object:
    return shapes.draw(RED_CIRCLE).image


@covers("absent-device")
@pytest.mark.timeout(120)
@pytest.mark.skipif(torch.cuda.is_available() or torch.backends.mps.is_available(), reason="a GPU is here")
def test_devices_and_formats_that_cannot_run_are_refused_when_the_model_is_made() -> None:
    for device in ("cuda", "cuda:1", "mps"):
        with pytest.raises(DeviceError, match="devices present: cpu"):
            SmolVLM("shapes-smolvlm", device=device)
    for device, dtype in (("tpu", "auto"), ("cpu", "int4")):
        with pytest.raises(RequestError, match="choose one of"):
            SmolVLM("shapes-smolvlm", device=device, dtype=dtype)
    with pytest.raises(RequestError, match="int8=True keeps the other layers in float32"):
        SmolVLM("shapes-smolvlm", int8=True, dtype="bfloat16")
    with pytest.raises(RequestError, match="runs on its server"):
        get_model("remote:m@http://127.0.0.1:9/v1", device="cpu")
    assert SmolVLM("shapes-smolvlm", device="cpu").caption(picture()) == CAPTION


@covers("chat-while-streaming")
@pytest.mark.timeout(120)
def test_a_second_question_while_a_turn_streams_is_refused(shapes_smolvlm: SmolVLM) -> None:
    chat = shapes_smolvlm.chat(picture())
    first = chat.ask("What colour is the shape?", stream=True)
    with pytest.raises(RequestError, match="still being answered"):
        chat.ask("What shape is it?")
    assert "".join(first) == "Red."
    fresh = shapes_smolvlm.chat(picture())
    fresh.ask("What colour is the shape?")
    assert chat.ask("What shape is it?") == fresh.ask("What shape is it?")  # the refusal left no trace
    assert len(chat.messages) == 4
    assert shapes_smolvlm.caption(picture()) == CAPTION


@covers("chat-overflow")
@pytest.mark.timeout(300)
def test_a_conversation_that_outgrows_the_context_is_refused_without_a_trace(shapes_smolvlm: SmolVLM) -> None:
    chat = shapes_smolvlm.chat(picture())
    with pytest.raises(RequestError, match=r"chat\.reset\(\)"):
        for _ in range(40):
            kept = chat.messages
            chat.ask("What colour is the shape?", max_new_tokens=8)
    assert chat.messages == kept
    chat.reset()
    assert chat.ask("What colour is the shape?") == "Red."


@covers("overlay-bad-detection")
@pytest.mark.parametrize(
    "detections",
    [[{"x": float("nan"), "y": 0.5}], [{"x": 1.5, "y": 0.5}], [{"x": True, "y": 0.5}], [{"x_min": 0.1}]],
    ids=["nan", "out-of-range", "bool", "missing-keys"],
)
def test_an_overlay_of_a_bad_detection_is_refused_and_the_picture_is_unchanged(detections: object) -> None:
    image = picture()
    before = image.tobytes()
    with pytest.raises(RequestError):
        overlay(image, detections)
    assert image.tobytes() == before


@covers("hub-code-checkpoint")
def test_a_checkpoint_that_needs_the_hubs_code_is_refused(tmp_path: Path) -> None:
    config = {"model_type": "someone_vlm", "auto_map": {"AutoModelForImageTextToText": "modeling.SomeoneVLM"}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "modeling.py").write_text("raise SystemExit('this must never run')\n")
    with pytest.raises(CheckpointError, match="never runs"):
        get_model(str(tmp_path)).load()
