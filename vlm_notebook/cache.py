"""The work done for recent images, kept per loaded model so a follow-up question skips it.

A transformers family splits every prompt into a *prefix* that ends with the image (the chat
opening and the image's tokens) and the question's own words. The prefix's KV cache (which
holds the vision encoder's output, already run through every layer of the language model) is
stored here under a key made of the picture's content and every setting that changes the
prefix; a later question about the same picture copies that cache and prefills only its words.
The store is bounded by a number of entries and by the bytes their tensors hold; the least
recently used entry goes first.
"""

from __future__ import annotations

import copy
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import torch
from PIL import Image

#: Default bounds of a model's store: pictures kept, and bytes of tensors kept.
DEFAULT_MAX_ENTRIES = 8
DEFAULT_MAX_BYTES = 1 << 30


def image_digest(picture: Image.Image) -> str:
    """A hash of the picture's content: its mode, size and pixels (not the file it came from)."""
    digest = hashlib.sha256()
    digest.update(f"{picture.mode}:{picture.size}".encode())
    digest.update(picture.tobytes())
    return digest.hexdigest()


@dataclass
class PrefixEntry:
    """The prompt prefix that ends with the image, and its KV cache.

    ``token_inputs`` are the per-token model inputs besides the ids (e.g. Qwen2-VL's
    ``mm_token_type_ids``) for the prefix; ``image_inputs`` are per-image inputs the model
    still needs after the pixels are gone (e.g. ``image_grid_thw``).
    """

    input_ids: torch.Tensor
    kv_cache: Any
    token_inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    image_inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    image_tokens: int = 0
    tiles: int | None = None
    vision_seconds: float = 0.0
    prefill_seconds: float = 0.0

    @property
    def nbytes(self) -> int:
        """Bytes held by the entry's tensors (the KV cache dominates)."""
        tensors = [self.input_ids, *self.token_inputs.values(), *self.image_inputs.values()]
        return sum(_tensor_bytes(tensor) for tensor in tensors) + cache_bytes(self.kv_cache)

    def fresh_cache(self) -> Any:
        """A private copy of the KV cache: generation appends to it, the stored one stays as it is."""
        return copy.deepcopy(self.kv_cache)


class _Sized(Protocol):
    @property
    def nbytes(self) -> int: ...


Entry = TypeVar("Entry", bound=_Sized)


class PrefixCache(Generic[Entry]):
    """A thread-safe least-recently-used store of entries (``PrefixEntry``, Moondream's encoded
    images), bounded by count and by the bytes the entries report."""

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES, max_bytes: int = DEFAULT_MAX_BYTES):
        if max_entries < 0 or max_bytes < 0:
            raise ValueError("max_entries and max_bytes must be 0 or more (0 turns the store off).")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Hashable, Entry] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Entry | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
            return entry

    def put(self, key: Hashable, entry: Entry) -> None:
        """Keep ``entry`` (unless it alone exceeds the byte bound), evicting the oldest as needed."""
        with self._lock:
            self._entries.pop(key, None)
            if self.max_entries == 0 or entry.nbytes > self.max_bytes:
                return
            self._entries[key] = entry
            while len(self._entries) > self.max_entries or self._total_bytes() > self.max_bytes:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    @property
    def nbytes(self) -> int:
        """Bytes held by all entries."""
        with self._lock:
            return self._total_bytes()

    def _total_bytes(self) -> int:
        return sum(entry.nbytes for entry in self._entries.values())


def cache_bytes(kv_cache: Any) -> int:
    """Bytes of the key and value tensors of a transformers cache (any layout)."""
    layers = getattr(kv_cache, "layers", None)
    if layers is not None:
        return sum(_tensor_bytes(getattr(layer, name, None)) for layer in layers for name in ("keys", "values"))
    if isinstance(kv_cache, Iterable):
        return sum(_tensor_bytes(tensor) for layer in kv_cache for tensor in layer)
    return 0


def _tensor_bytes(tensor: Any) -> int:
    if not isinstance(tensor, torch.Tensor):
        return 0
    return tensor.numel() * tensor.element_size()
