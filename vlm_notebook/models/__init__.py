"""The model families: ``from vlm_notebook.models import SmolVLM, Qwen2VL``.

Each family is imported when it is first asked for, so that importing this package (and the
widgets, magics and batch modules that use it) loads neither torch nor transformers.
"""

import importlib
from typing import TYPE_CHECKING, Any

from .base import VLM

if TYPE_CHECKING:
    from .generic import TransformersModel
    from .moondream import Moondream
    from .qwen2vl import Qwen2VL
    from .remote import RemoteVLM
    from .smolvlm import SmolVLM

__all__ = ["VLM", "Moondream", "Qwen2VL", "RemoteVLM", "SmolVLM", "TransformersModel"]

#: Where each family lives, relative to this package.
_FAMILY_MODULES = {
    "Moondream": ".moondream", "Qwen2VL": ".qwen2vl", "RemoteVLM": ".remote", "SmolVLM": ".smolvlm",
    "TransformersModel": ".generic",
}


def __getattr__(name: str) -> Any:
    module = _FAMILY_MODULES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), name)
