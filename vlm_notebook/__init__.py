"""vlm-notebook: stream small vision-language models into Jupyter, token by token.

>>> from vlm_notebook.models import SmolVLM
>>> model = SmolVLM("shapes-smolvlm")
>>> for chunk in model.caption(image, stream=True):
...     print(chunk, end="", flush=True)
"""

from typing import Any

from .errors import (
    CheckpointError,
    CheckpointNotAvailableError,
    DeviceError,
    ImageError,
    RemoteError,
    RemoteTimeoutError,
    RemoteUnavailableError,
    RequestError,
    UnknownModelError,
    VLMError,
)
from .images import load_image
from .options import GenerationOptions
from .overlay import overlay
from .registry import get_model, known_models
from .stream import StreamStats, TextStream

__version__ = "0.1.0"


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext vlm_notebook``: register the magics (imported only now, to keep import cheap)."""
    from .magics import VLMMagics

    ipython.register_magics(VLMMagics(ipython))


__all__ = [
    "CheckpointError",
    "CheckpointNotAvailableError",
    "DeviceError",
    "GenerationOptions",
    "ImageError",
    "RemoteError",
    "RemoteTimeoutError",
    "RemoteUnavailableError",
    "RequestError",
    "StreamStats",
    "TextStream",
    "UnknownModelError",
    "VLMError",
    "__version__",
    "get_model",
    "known_models",
    "load_image",
    "overlay",
]
