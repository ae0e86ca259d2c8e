"""The model families: ``from vlm_notebook.models import SmolVLM``."""

from .base import VLM
from .smolvlm import SmolVLM

__all__ = ["VLM", "SmolVLM"]
