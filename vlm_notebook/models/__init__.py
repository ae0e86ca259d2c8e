"""The model families: ``from vlm_notebook.models import SmolVLM, Qwen2VL``."""

from .base import VLM
from .qwen2vl import Qwen2VL
from .smolvlm import SmolVLM

__all__ = ["VLM", "Qwen2VL", "SmolVLM"]
