"""Faults during generation: exceptions, cancels at every stage, many cycles, many threads.

After each, the worker thread is gone and the same loaded model answers the next request exactly.
"""

from __future__ import annotations

import _thread
import gc
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from holds import held_at_call, hook
from reliability_cases import covers
from reliability_support import RED_CAPTION, assert_still_answers, generate_threads, picture

from vlm_notebook import shapes
from vlm_notebook.models import SmolVLM
from vlm_notebook.models.base import VLM
from vlm_notebook.stream import TextStream


@pytest.fixture(params=["smolvlm", "qwen2vl"])
def model(request: pytest.FixtureRequest, shapes_smolvlm: SmolVLM) -> Iterator[VLM]:
    loaded: VLM = shapes_smolvlm if request.param == "smolvlm" else request.getfixturevalue("shapes_qwen2vl")
    yield loaded
    assert_still_answers(loaded)


def network(model: VLM) -> torch.nn.Module:
    module: torch.nn.Module = model.model  # type: ignore[attr-defined]
    return module


def head(model: VLM) -> torch.nn.Module:
    """The output layer: it runs once per generated token, the prefill's included."""
    lm_head = network(model).lm_head
    assert isinstance(lm_head, torch.nn.Module)
    return lm_head


def store_the_pictures_work(model: VLM) -> None:
    """Answer about the picture once, so that its work is stored: that work runs the output layer
    once, and a later request about it then runs the output layer once per token, as ``head`` says.
    Without it (a test run alone, or the picture dropped from the store) a hold meant for one token
    lands on the token before."""
    assert model.caption_with(picture()) == RED_CAPTION


def first_decoder_layer(model: VLM) -> torch.nn.Module:
    """The language model's first layer: it runs in every prefill, the picture's work reused or not."""
    layer = network(model).get_decoder().layers[0]  # type: ignore[operator]
    assert isinstance(layer, torch.nn.Module)
    return layer


def streamed(model: VLM, scene: shapes.Scene | None = None, **options: Any) -> TextStream:
    stream = model.caption_with(picture(scene) if scene else picture(), stream=True, **options)
    assert isinstance(stream, TextStream)
    return stream


def wait_for_no_workers(timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while generate_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not generate_threads(), "every generation thread ended"


class Injected(RuntimeError):
    """The fault the tests inject."""


@covers("exception-mid-stream")
@pytest.mark.timeout(60)
@pytest.mark.parametrize("call", [1, 3], ids=["in-prefill", "mid-decode"])
@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "not-streamed"])
def test_an_exception_in_the_model_reaches_the_caller_as_itself(model: VLM, call: int, stream: bool) -> None:
    fault = Injected(f"forward call {call} failed")
    calls = 0

    def fail(module: torch.nn.Module, args: object, output: object) -> None:
        nonlocal calls
        calls += 1
        if calls == call:
            raise fault

    before = model.caption_with(picture(), max_new_tokens=call - 1) if call > 1 else ""
    with hook(head(model), fail, pre=False):
        if stream:
            answer = streamed(model)
            chunks: list[str] = []
            with pytest.raises(Injected) as caught:
                chunks.extend(answer)
            assert "".join(chunks) == answer.text == before, "the text made before the fault is kept"
            assert answer.stats.finish_reason == "error" and answer.stats.tokens == call - 1
            assert not answer.running
        else:
            with pytest.raises(Injected) as caught:
                model.caption_with(picture())
    assert caught.value is fault
    assert not generate_threads()


@covers("cancel-before-first-token")
@pytest.mark.timeout(60)
def test_cancel_before_the_first_token(model: VLM) -> None:
    calls = 0

    def count(module: torch.nn.Module, args: object) -> None:
        nonlocal calls
        calls += 1

    with hook(network(model), count):
        with model._generation_lock:  # another generation holds the model
            answer = streamed(model)
            answer.cancel()
        assert list(answer) == [] and answer.stats.tokens == 0
        assert answer.stats.finish_reason == "cancelled"
        assert calls == 0, "the model never ran for a cancelled request"
    wait_for_no_workers()


@covers("cancel-during-prefill")
@pytest.mark.timeout(60)
def test_cancel_during_the_prefill(model: VLM) -> None:
    first_layer = first_decoder_layer(model)
    tokens = 0

    def count(module: torch.nn.Module, args: object) -> None:
        nonlocal tokens
        tokens += 1

    with hook(head(model), count), held_at_call(first_layer, 1) as (reached, release):
        answer = streamed(model)
        assert reached.wait(10), "the prefill started"
        answer.cancel()
        release.set()
        assert list(answer) == []
    assert answer.stats.finish_reason == "cancelled" and answer.stats.tokens == 0
    assert tokens == 0, "the prefill stopped before the output layer ran"
    wait_for_no_workers()


@covers("cancel-mid-decode")
@pytest.mark.timeout(60)
def test_cancel_mid_decode_stops_within_a_token(model: VLM) -> None:
    store_the_pictures_work(model)
    with held_at_call(head(model), 3) as (reached, release):
        answer = streamed(model)
        assert reached.wait(10), "two tokens made, the third under way"
        answer.cancel()
        release.set()
        text = answer.wait(30)
    assert answer.stats.finish_reason == "cancelled" and answer.stats.tokens <= 3
    assert text and text == model.caption_with(picture(), max_new_tokens=answer.stats.tokens)
    assert RED_CAPTION.startswith(text) and text != RED_CAPTION
    wait_for_no_workers()


@covers("cancel-mid-decode")
@pytest.mark.timeout(60)
def test_leaving_a_with_block_or_dropping_the_stream_ends_the_worker(model: VLM) -> None:
    store_the_pictures_work(model)  # the first chunk comes before the hold
    with held_at_call(head(model), 2) as (reached, release), streamed(model) as answer:
        assert next(answer)
        assert reached.wait(10)
        # Let the worker go on only once leaving the block has cancelled it: released before, it
        # could finish the whole caption first (a few ms a token) on a loaded machine.
        threading.Thread(target=lambda: (answer._cancel.wait(10), release.set())).start()
    assert answer.stats.finish_reason == "cancelled" and not answer.running

    with held_at_call(head(model), 2) as (reached, release):
        dropped = streamed(model)
        assert reached.wait(10)
        del dropped
        gc.collect()
        release.set()
        wait_for_no_workers()


@covers("cancel-mid-decode")
@pytest.mark.timeout(60)
@pytest.mark.usefixtures("ctrl_c_raises")
def test_a_ctrl_c_while_iterating_cancels_the_generation(shapes_smolvlm: SmolVLM) -> None:
    store_the_pictures_work(shapes_smolvlm)
    with held_at_call(head(shapes_smolvlm), 3) as (reached, release):
        answer = streamed(shapes_smolvlm)
        waiting = threading.Event()
        get = answer._chunks.get

        def get_and_note_waiting(*args: Any, **kwargs: Any) -> object:
            # The consumer polls the queue; once the worker is held and the queue is empty, it is
            # waiting for the third token. Interrupting it sooner, between two chunks, would raise
            # the KeyboardInterrupt outside the wait, where the stream does not see it.
            if reached.is_set() and answer._chunks.empty():
                waiting.set()
            return get(*args, **kwargs)

        answer._chunks.get = get_and_note_waiting  # type: ignore[method-assign]

        def press_ctrl_c() -> None:
            if reached.wait(10) and waiting.wait(10):  # the consumer is waiting for the third token
                _thread.interrupt_main()
                answer._cancel.wait(10)  # the interrupted consumer cancels the worker...
                release.set()  # ...which may then go on, and must stop at once

        with pytest.raises(KeyboardInterrupt):
            threading.Thread(target=press_ctrl_c).start()
            for _ in answer:
                pass
        release.set()
        assert not answer.running, "the worker ended before the interrupt reached the caller"
    assert answer.stats.finish_reason == "cancelled" and answer.stats.tokens <= 3
    assert_still_answers(shapes_smolvlm)


@covers("start-cancel-cycles")
@pytest.mark.timeout(180)
def test_200_start_and_cancel_cycles(shapes_smolvlm: SmolVLM) -> None:
    threads_before = threading.active_count()
    endings: set[str | None] = set()
    for cycle in range(200):
        answer = streamed(shapes_smolvlm)
        if cycle % 3 == 0:
            answer.cancel()  # at once: before the model, in the prefill or after a token
            answer.wait(30)
        elif cycle % 3 == 1:
            next(answer, None)  # after the first chunk
            answer.cancel()
            list(answer)
        else:
            with answer:
                next(answer, None)
        assert not answer.running
        assert RED_CAPTION.startswith(answer.text)
        endings.add(answer.stats.finish_reason)
    assert endings <= {"cancelled", "stop"} and "cancelled" in endings
    wait_for_no_workers()
    assert threading.active_count() == threads_before
    assert_still_answers(shapes_smolvlm)


@covers("eight-threads")
@pytest.mark.timeout(180)
def test_eight_threads_on_one_model_are_served_one_at_a_time(model: VLM) -> None:
    scenes = shapes.all_scenes()[:: max(1, len(shapes.all_scenes()) // 8)][:8]
    active = peak = 0
    counting = threading.Lock()

    def enter(module: torch.nn.Module, args: object) -> None:
        nonlocal active, peak
        with counting:
            active += 1
            peak = max(peak, active)

    def leave(module: torch.nn.Module, args: object, output: object) -> None:
        nonlocal active
        with counting:
            active -= 1

    start = threading.Barrier(8)
    answers: dict[int, str] = {}
    expected: dict[int, str] = {}

    def ask(index: int) -> None:
        scene = scenes[index]
        start.wait(10)
        if index % 3 == 0:
            answers[index] = str(model.caption_with(picture(scene)))
        elif index % 3 == 1:
            answers[index] = "".join(streamed(model, scene=scene))
        else:
            answers[index] = model.query(picture(scene), shapes.questions(scene)[0][0])

    for index, scene in enumerate(scenes):
        expected[index] = shapes.questions(scene)[0][1] if index % 3 == 2 else shapes.caption(scene)
    with hook(network(model), enter), hook(network(model), leave, pre=False):
        workers = [threading.Thread(target=ask, args=(index,)) for index in range(8)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(120)
    assert len(set(scenes)) == 8
    assert answers == expected, "every caller got the right answer for its own picture"
    assert peak == 1, "never two forward passes at once"


def read_from_two_threads(answer: TextStream) -> tuple[list[list[str]], list[BaseException]]:
    """Iterate ``answer`` from two threads at once: the chunks each got, and what each raised."""
    shares: list[list[str]] = [[], []]
    raised: list[BaseException] = []
    both_started = threading.Barrier(2)

    def read(share: list[str]) -> None:
        both_started.wait(10)
        try:
            share.extend(answer)
        except BaseException as error:  # what each consumer meets is the test's subject
            raised.append(error)

    readers = [threading.Thread(target=read, args=(share,)) for share in shares]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join(30)
    assert not any(reader.is_alive() for reader in readers), "both threads ended: neither waits for ever"
    return shares, raised


@covers("two-consumers")
@pytest.mark.timeout(60)
def test_two_threads_reading_one_stream_share_the_answer_and_both_end(model: VLM) -> None:
    expected = list(streamed(model))
    for _ in range(20):  # which thread gets the end varies from run to run
        answer = streamed(model)
        shares, raised = read_from_two_threads(answer)
        assert not raised
        assert sorted(shares[0] + shares[1]) == sorted(expected), "every chunk went to exactly one of them"
        assert all(chunk in expected for share in shares for chunk in share)
        assert answer.text == RED_CAPTION and answer.stats.finish_reason == "stop"
    wait_for_no_workers()


@covers("two-consumers")
@pytest.mark.timeout(60)
def test_two_threads_reading_one_failing_stream_both_get_the_exception(model: VLM) -> None:
    fault = Injected("forward call 3 failed")
    calls = 0

    def fail(module: torch.nn.Module, args: object, output: object) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise fault

    store_the_pictures_work(model)
    with hook(head(model), fail, pre=False):
        answer = streamed(model)
        _, raised = read_from_two_threads(answer)
    assert raised == [fault, fault], "each consumer learns the generation failed"
    assert answer.stats.finish_reason == "error"
    wait_for_no_workers()
