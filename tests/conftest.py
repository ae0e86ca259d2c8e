"""Shared fixtures. Tests never reach the Hugging Face Hub: it is out of reach on CI machines."""

from __future__ import annotations

import os
import signal

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before huggingface_hub reads it

from collections.abc import Iterator

import pytest

from vlm_notebook import cpu
from vlm_notebook.models import Moondream, Qwen2VL, SmolVLM
from vlm_notebook.models.generic import TransformersModel
from vlm_notebook.models.hf import TransformersVLM
from vlm_notebook.registry import get_model


@pytest.fixture(scope="session")
def shapes_smolvlm() -> SmolVLM:
    """The shipped checkpoint, loaded once for the whole test session."""
    model = SmolVLM("shapes-smolvlm")
    model.load()
    return model


@pytest.fixture(scope="session")
def shapes_qwen2vl() -> Qwen2VL:
    """The shipped Qwen2-VL checkpoint, loaded once for the whole test session."""
    model = Qwen2VL("shapes-qwen2vl")
    model.load()
    return model


@pytest.fixture(scope="session")
def shapes_moondream() -> Moondream:
    """The shipped Moondream checkpoint, loaded once for the whole test session."""
    model = Moondream("shapes-moondream")
    model.load()
    return model


@pytest.fixture(scope="session")
def shapes_gemma4() -> TransformersModel:
    """The shipped Gemma 4 checkpoint (generic family), loaded once for the whole test session."""
    model = get_model("shapes-gemma4")
    assert isinstance(model, TransformersModel)
    model.load()
    return model


@pytest.fixture(params=["smolvlm", "qwen2vl"])
def model(request: pytest.FixtureRequest, shapes_smolvlm: SmolVLM, shapes_qwen2vl: Qwen2VL) -> TransformersVLM:
    """Each shipped transformers checkpoint in turn, with no picture's work stored."""
    chosen: TransformersVLM = shapes_smolvlm if request.param == "smolvlm" else shapes_qwen2vl
    chosen.image_cache.clear()
    return chosen


@pytest.fixture
def thread_policy_restored() -> Iterator[None]:
    """Whatever thread policy the test sets, the one before it is back afterwards."""
    saved = cpu.thread_policy()
    try:
        yield
    finally:
        cpu.set_thread_policy(prefill=saved.prefill, decode=saved.decode, measure_decode=saved.measure_decode)


@pytest.fixture
def two_prefill_threads_one_decode(thread_policy_restored: None) -> None:
    """The thread policy prefill=2, decode=1 for one test (whatever the machine's cores), then the old one."""
    cpu.set_thread_policy(prefill=2, decode=1)


@pytest.fixture
def ctrl_c_raises() -> Iterator[None]:
    """Ctrl-C raises KeyboardInterrupt in the main thread, as in a terminal or a kernel, even where the
    tests were started with SIGINT ignored (a shell's background job inherits that, and Python then
    keeps it ignored)."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)
