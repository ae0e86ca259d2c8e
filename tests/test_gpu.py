"""The shipped checkpoints of every family on a CUDA GPU: caption, query, stream, cancel and follow-up reuse.

Skipped where there is no CUDA GPU (``-m gpu`` selects them on a machine that has one). The
same plumbing is checked on the CPU by tests/test_runtime.py.
"""

from __future__ import annotations

import pytest
import torch

from vlm_notebook import get_model, shapes
from vlm_notebook.models import VLM, graphs

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine"),
]

NAMES = ["shapes-smolvlm", "shapes-qwen2vl", "shapes-moondream", "shapes-gemma4"]
RED_CIRCLE = shapes.Scene("circle", "red", "white")


@pytest.fixture(scope="module", params=NAMES)
def gpu_model(request: pytest.FixtureRequest) -> VLM:
    model = get_model(request.param)  # device="auto": the GPU
    model.load()
    return model


@pytest.fixture(scope="module")
def cpu_answers(gpu_model: VLM) -> list[str]:
    """The answers the same checkpoint gives on the CPU in fp32: what the GPU must give."""
    model = get_model(gpu_model.name, device="cpu", dtype="float32")
    return [model.caption(shapes.draw(RED_CIRCLE).image), *ask_all(model)]


def ask_all(model: VLM) -> list[str]:
    picture = shapes.draw(RED_CIRCLE).image
    return [model.query(picture, question) for question, _ in shapes.questions(RED_CIRCLE)]


@pytest.mark.timeout(300)
def test_auto_runs_on_the_gpu_and_answers_as_on_the_cpu(gpu_model: VLM, cpu_answers: list[str]) -> None:
    assert gpu_model.device is not None and gpu_model.device.startswith("cuda")
    picture = shapes.draw(RED_CIRCLE).image
    stream = gpu_model.caption(picture, stream=True)
    assert "".join(stream) == cpu_answers[0]
    assert stream.stats.device == gpu_model.device and stream.stats.dtype in ("bfloat16", "float16")
    assert ask_all(gpu_model) == cpu_answers[1:]  # follow-ups on the picture's stored work


@pytest.mark.timeout(300)
def test_a_follow_up_reuses_the_pictures_work_on_the_gpu(gpu_model: VLM) -> None:
    picture = shapes.draw(shapes.Scene("square", "blue", "black")).image
    first = gpu_model.query(picture, "What colour is the shape?", stream=True)
    "".join(first)
    again = gpu_model.query(picture, "What shape is it?", stream=True)
    "".join(again)
    if first.stats.image_cache is not None:  # families that report it
        assert again.stats.image_cache == "hit"


@pytest.mark.timeout(300)
def test_a_cancel_stops_a_gpu_generation_and_the_model_keeps_answering(
    gpu_model: VLM, cpu_answers: list[str]
) -> None:
    picture = shapes.draw(RED_CIRCLE).image
    stream = gpu_model.caption(picture, stream=True, max_new_tokens=200)
    next(stream)
    stream.cancel()
    stream.wait(timeout=60)
    assert stream.stats.finish_reason in ("cancelled", "stop")
    assert gpu_model.caption(picture) == cpu_answers[0]


@pytest.mark.timeout(300)
def test_seeded_sampling_on_the_gpu_repeats(gpu_model: VLM) -> None:
    picture = shapes.draw(RED_CIRCLE).image
    first = gpu_model.caption(picture, temperature=1.0, seed=7)
    assert gpu_model.caption(picture, temperature=1.0, seed=7) == first


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", ["shapes-smolvlm", "shapes-qwen2vl", "shapes-moondream"])
def test_cuda_graph_steps_answer_as_the_steps_operator_by_operator(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model = get_model(name)
    picture = shapes.draw(RED_CIRCLE).image
    replayed = [model.caption(picture), *ask_all(model)]
    monkeypatch.setattr(graphs, "CUDA_GRAPHS", False)
    assert [model.caption(picture), *ask_all(model)] == replayed
