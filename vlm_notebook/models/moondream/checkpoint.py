"""Loading a Moondream checkpoint directory: config.json, model.safetensors, tokenizer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from tokenizers import Tokenizer

from ...errors import CheckpointError
from ...hub import checkpoint_directory
from ...runtime import CPU_FLOAT32, Runtime
from .config import MoondreamConfig
from .network import MoondreamCheckpoint, MoondreamNetwork, build_on_meta

#: Where the published checkpoints' tokenizer lives (the weights repo does not hold it).
TOKENIZER_REPO = "moondream/starmie-v1"
WEIGHTS_FILE = "model.safetensors"


def read_config(directory: Path) -> tuple[MoondreamConfig, dict[str, Any]]:
    """The network config (config.json's ``config`` entry; empty means full size) and the raw JSON."""
    raw = json.loads((directory / "config.json").read_text())
    try:
        return MoondreamConfig.from_dict(raw.get("config") or {}), raw
    except (TypeError, AttributeError) as error:
        raise CheckpointError(f"{str(directory)!r} has a Moondream config this version cannot read: {error}") from None


def load_network(directory: Path, config: MoondreamConfig, runtime: Runtime = CPU_FLOAT32) -> MoondreamNetwork:
    """Build the module tree without memory, then take the file's tensors by name, strictly, on
    the runtime's device and in its number format."""
    path = directory / WEIGHTS_FILE
    if not path.is_file():
        raise CheckpointError(f"{str(directory)!r} has no {WEIGHTS_FILE}: download the checkpoint again.")
    try:
        tensors = _read_as(path, runtime)
    except Exception as error:  # safetensors raises its own error types for a cut or corrupt file
        raise CheckpointError(
            f"Cannot read {str(path)!r} ({type(error).__name__}: {error}): the file is damaged or incomplete; "
            "download the checkpoint again."
        ) from None
    root: MoondreamCheckpoint = build_on_meta(config)
    try:
        root.load_state_dict(tensors, strict=True, assign=True)
    except RuntimeError as error:
        raise CheckpointError(
            f"The weights in {str(path)!r} do not fit the Moondream architecture described by its config.json: "
            f"{str(error).splitlines()[0]}"
        ) from None
    return root.model.eval()


def _read_as(path: Path, runtime: Runtime) -> dict[str, torch.Tensor]:
    """Every tensor of the file in the runtime's format and on its device, converted one at a time
    (the published file is bf16: never holding all of it twice keeps the peak near the final size,
    7.7 GB in fp32 at full size)."""
    with safe_open(str(path), framework="pt") as weights:
        names: list[str] = weights.keys()  # a safetensors file handle is not iterable
        return {name: weights.get_tensor(name).to(device=runtime.device, dtype=runtime.dtype) for name in names}


def load_tokenizer(directory: Path, raw_config: dict[str, Any], revision: str | None = None) -> Tokenizer:
    """The checkpoint's own tokenizer when its config names one, else the published one from the Hub."""
    name = raw_config.get("tokenizer_file")
    path = directory / name if isinstance(name, str) else checkpoint_directory(TOKENIZER_REPO) / "tokenizer.json"
    if not path.is_file():
        raise CheckpointError(f"The tokenizer file {str(path)!r} is missing: download the checkpoint again.")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as error:  # tokenizers raises a bare Exception for an unreadable file
        message = f"Cannot read the tokenizer {str(path)!r} ({error}): download the checkpoint again."
        raise CheckpointError(message) from None
