"""Shared fixtures. Tests never reach the Hugging Face Hub: it is out of reach on CI machines."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before huggingface_hub reads it

from collections.abc import Iterator

import pytest

from vlm_notebook import cpu
from vlm_notebook.models import Qwen2VL, SmolVLM


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


@pytest.fixture
def two_prefill_threads_one_decode() -> Iterator[None]:
    """The thread policy prefill=2, decode=1 for one test (whatever the machine's cores), then the old one."""
    saved = cpu.thread_policy()
    cpu.set_thread_policy(prefill=2, decode=1)
    try:
        yield
    finally:
        cpu.set_thread_policy(prefill=saved.prefill, decode=saved.decode)
