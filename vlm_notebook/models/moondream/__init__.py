"""Moondream 2, implemented natively in PyTorch: ``from vlm_notebook.models import Moondream``."""

from .cache import EncodedImage
from .config import MoondreamConfig
from .model import Moondream

__all__ = ["EncodedImage", "Moondream", "MoondreamConfig"]
