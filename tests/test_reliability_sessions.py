"""Long sessions: 200 generations on one model, and 200 runs of one widget, leak neither memory nor threads.

The level is taken after 10 warm-up generations (allocator pools, the tokenizer's and torch's
caches and the image cache fill up first); after 200, resident memory must be within
``RSS_TOLERANCE`` of it and the thread count back to it exactly.
"""

from __future__ import annotations

import gc
import threading
import time

import psutil
import pytest
from reliability_cases import covers
from reliability_support import assert_still_answers, picture

from vlm_notebook import shapes
from vlm_notebook.models import SmolVLM
from vlm_notebook.widgets import VLMWidget

GENERATIONS = 200
WARM_UP = 10
#: Growth allowed over the 190 generations after the warm-up (measured: 2 to 4 MB). A leak of
#: 100 kB a generation (19 MB) fails it.
RSS_TOLERANCE = 16 * 2**20
SCENES = shapes.all_scenes()


def level() -> tuple[int, int]:
    """(resident bytes, live threads) once finished threads and garbage are gone."""
    deadline = time.monotonic() + 10
    while any(t.name.startswith("vlm-notebook") for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.01)  # a worker that has handed over its last chunk may still be finishing
    gc.collect()
    return psutil.Process().memory_info().rss, threading.active_count()


def assert_back_to_level(start: tuple[int, int], what: str) -> None:
    rss, threads = level()
    grown = rss - start[0]
    assert threads == start[1], f"{what}: {threads} threads, {start[1]} after the warm-up"
    assert grown < RSS_TOLERANCE, f"{what}: resident memory grew {grown / 2**20:.1f} MB after the warm-up"


@covers("200-generations")
@pytest.mark.timeout(300)
def test_200_generations_on_one_model(shapes_smolvlm: SmolVLM) -> None:
    start = level()
    for index in range(GENERATIONS):
        if index == WARM_UP:
            start = level()
        scene = SCENES[index % len(SCENES)]
        question, answer = shapes.questions(scene)[index % 3]
        if index % 4 == 0:  # a question, not streamed (on this thread)
            assert shapes_smolvlm.query(picture(scene), question) == answer
        elif index % 2:  # a caption, streamed (a worker thread each)
            assert "".join(shapes_smolvlm.caption(picture(scene), stream=True)) == shapes.caption(scene)
        else:  # a question, streamed
            assert "".join(shapes_smolvlm.query(picture(scene), question, stream=True)) == answer
    assert_back_to_level(start, f"{GENERATIONS} generations")
    assert_still_answers(shapes_smolvlm)


@covers("200-widget-runs")
@pytest.mark.timeout(300)
def test_200_runs_of_one_widget(shapes_smolvlm: SmolVLM) -> None:
    widget = VLMWidget(shapes_smolvlm)
    start = level()
    for index in range(GENERATIONS):
        if index == WARM_UP:
            start = level()
        scene = SCENES[index % len(SCENES)]
        widget.image = picture(scene)
        if index % 2:
            assert widget.run(mode="caption")
            expected = shapes.caption(scene)
        else:
            question, expected = shapes.questions(scene)[index % 3]
            assert widget.run(question)
        assert widget.wait(30) == expected
        assert widget.output.outputs[0]["text"] == expected, "the widget shows the whole answer"
        assert widget.message.value == ""
    assert_back_to_level(start, f"{GENERATIONS} widget runs")
    widget.close()
    assert_still_answers(shapes_smolvlm)
