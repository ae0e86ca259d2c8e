"""Loading runs on the worker thread: a call on a model not yet loaded returns at once, and the
stream's reader gets the answer once the checkpoint is in, or the loading error (issue #16 item 6)."""

from __future__ import annotations

import _thread
import threading
import time

import pytest

from vlm_notebook import shapes
from vlm_notebook.errors import CheckpointNotAvailableError
from vlm_notebook.models import VLM, Moondream, Qwen2VL, SmolVLM, TransformersModel
from vlm_notebook.stream import TextStream

RED_CIRCLE = shapes.Scene("circle", "red", "white")
CAPTIONS = {
    "shapes-smolvlm": (SmolVLM, {}),
    "shapes-qwen2vl": (Qwen2VL, {}),
    "shapes-moondream": (Moondream, {"length": "short"}),
    "shapes-gemma4": (TransformersModel, {}),
}


def gated(model: VLM) -> threading.Event:
    """Hold ``model``'s loading until the returned event is set."""
    gate, load = threading.Event(), model._load

    def slow_load() -> None:
        assert gate.wait(30), "the test never let the loading go on"
        load()

    model._load = slow_load  # type: ignore[method-assign]
    return gate


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", list(CAPTIONS))
def test_a_stream_returns_while_the_checkpoint_loads_and_then_answers(name: str) -> None:
    family, options = CAPTIONS[name]
    model = family(name)
    gate = gated(model)
    started = time.perf_counter()
    stream = model.caption(shapes.draw(RED_CIRCLE).image, stream=True, **options)
    assert isinstance(stream, TextStream)
    assert time.perf_counter() - started < 5 and not model.loaded, "returned before the loading ended"
    gate.set()
    with stream:
        text = "".join(stream)
    assert model.loaded and text.startswith("A red circle")
    assert text == model.caption(shapes.draw(RED_CIRCLE).image, **options), "streamed as the whole text"


@pytest.mark.timeout(60)
def test_a_loading_error_reaches_the_reader_and_a_later_call_tries_again() -> None:
    model = SmolVLM("smolvlm-256m")  # a Hub checkpoint, out of reach here
    stream = model.query(shapes.draw(RED_CIRCLE).image, "What shape is it?", stream=True)
    with pytest.raises(CheckpointNotAvailableError, match="hf download HuggingFaceTB/SmolVLM-256M-Instruct"), stream:
        "".join(stream)
    assert not model.loaded
    with pytest.raises(CheckpointNotAvailableError, match="hf download"):
        model.query(shapes.draw(RED_CIRCLE).image, "What shape is it?")


@pytest.mark.timeout(120)
def test_models_loading_at_once_on_their_streams_threads_load_whole() -> None:
    """Two streams on unloaded models load both at once; every model loaded then and later is whole
    (two transformers loads at the same moment once left a later one without its output layer)."""
    picture = shapes.draw(RED_CIRCLE).image
    first, second = SmolVLM("shapes-smolvlm", defaults="card"), Qwen2VL("shapes-qwen2vl", defaults="card")
    streams = [first.caption(picture, stream=True), second.caption(picture, stream=True)]
    assert [stream.wait(60) for stream in streams] and [stream.text for stream in streams] == [
        "A red circle on a white background.", "A red circle on a white background."
    ]
    for later in (Qwen2VL("shapes-qwen2vl", defaults="card"), SmolVLM("shapes-smolvlm")):
        assert later.caption(picture) == "A red circle on a white background."


@pytest.mark.timeout(60)
def test_a_load_runs_on_a_thread_of_its_own_whose_nested_loads_return_and_whose_errors_reach_the_caller(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """So that it leaves no torch (OpenMP) worker threads on the caller's thread, which slow every
    later decode step on a stream's thread (benchmarks/results/decode_threads.md)."""
    model, loaders = SmolVLM("shapes-smolvlm"), []
    real_load = model._load

    def load_and_look() -> None:
        loaders.append(threading.current_thread())
        real_load()
        model.load()  # as a format check does (Qwen2-VL's reads its pixel range): returns at once

    monkeypatch.setattr(model, "_load", load_and_look)
    assert model.load() is model and loaders[0] is not threading.current_thread()
    assert model.caption(shapes.draw(RED_CIRCLE).image) == "A red circle on a white background."
    broken = SmolVLM("shapes-smolvlm")
    failure = CheckpointNotAvailableError("the test's failure")

    def fail() -> None:
        raise failure

    monkeypatch.setattr(broken, "_load", fail)
    with pytest.raises(CheckpointNotAvailableError) as raised:
        broken.load()
    assert raised.value is failure and not broken.loaded


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("ctrl_c_raises")
def test_a_ctrl_c_during_a_load_returns_at_once_and_the_next_call_waits_for_that_load(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A load cannot be stopped halfway: the interrupted caller gets its KeyboardInterrupt, the load
    goes on, and the next call waits for it instead of loading the checkpoint a second time."""
    model, loads = SmolVLM("shapes-smolvlm"), []
    gate, real_load = threading.Event(), model._load

    def held_load() -> None:
        loads.append(threading.current_thread())
        assert gate.wait(30), "the test never let the loading go on"
        real_load()

    monkeypatch.setattr(model, "_load", held_load)

    def press_ctrl_c() -> None:
        while not loads:  # the caller is waiting for the load
            time.sleep(0.01)
        _thread.interrupt_main()

    threading.Thread(target=press_ctrl_c).start()
    with pytest.raises(KeyboardInterrupt):
        model.load()
    assert not model.loaded
    gate.set()
    assert model.load() is model and model.loaded
    assert len(loads) == 1, "the interrupted load was waited for, not started again"
    assert model.caption(shapes.draw(RED_CIRCLE).image) == "A red circle on a white background."
