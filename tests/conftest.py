"""Shared fixtures. Tests never reach the Hugging Face Hub: it is out of reach on CI machines."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before huggingface_hub reads it

import pytest

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
