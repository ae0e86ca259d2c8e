"""The model families: ``from vlm_notebook.models import SmolVLM, Qwen2VL``."""

from typing import TYPE_CHECKING, Any

from .base import VLM
from .qwen2vl import Qwen2VL
from .remote import RemoteVLM
from .smolvlm import SmolVLM

if TYPE_CHECKING:
    from .moondream import Moondream

__all__ = ["VLM", "Moondream", "Qwen2VL", "RemoteVLM", "SmolVLM"]


def __getattr__(name: str) -> Any:
    """Import Moondream (our own PyTorch code, no transformers) only when it is asked for."""
    if name == "Moondream":
        from .moondream import Moondream

        return Moondream
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
