"""The key/value cache of the text model, and an encoded image (its cached prefix)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


class KVCache:
    """Keys and values of every layer for positions ``0 .. length``, in preallocated tensors."""

    def __init__(
        self,
        n_layers: int,
        n_kv_heads: int,
        head_dim: int,
        capacity: int,
        device: torch.device | None = None,
        dtype: torch.dtype = torch.float32,
    ):
        shape = (1, n_kv_heads, capacity, head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.length = 0

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2]

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new (1, H, T, D) keys and values after the cached ones; return all of them."""
        end = self.length + k.shape[2]
        if end > self.capacity:
            raise ValueError(f"the key/value cache holds {self.capacity} positions; {end} were needed")
        self.keys[layer][:, :, self.length : end] = k
        self.values[layer][:, :, self.length : end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def advance(self, count: int) -> None:
        """Called once every layer has written ``count`` new positions."""
        self.length += count

    def extended(self, capacity: int) -> KVCache:
        """A new cache of ``capacity`` positions that starts with a copy of this one's contents."""
        copy = KVCache.__new__(KVCache)
        copy.keys = [_grow(k, self.length, capacity) for k in self.keys]
        copy.values = [_grow(v, self.length, capacity) for v in self.values]
        copy.length = self.length
        return copy


class PositionedCache:
    """``cache`` written at the position held in ``position`` (a tensor on the cache's device):
    every write has the same shapes and returns the whole buffers, as a CUDA graph needs; attention
    then reads them through a mask of the positions so far. The step that owns ``position`` moves
    it and the cache's length on (``advance`` does nothing, so that a replayed graph, which runs no
    Python, and the first run agree)."""

    def __init__(self, cache: KVCache, position: torch.Tensor):
        self.cache, self.position = cache, position

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store one new (1, H, 1, D) key and value at the position; return the (1, H, capacity, D) buffers."""
        keys, values = self.cache.keys[layer], self.cache.values[layer]
        keys.index_copy_(2, self.position, k)
        values.index_copy_(2, self.position, v)
        return keys, values

    def advance(self, count: int) -> None:
        """Nothing: see the class."""


def _grow(tensor: torch.Tensor, length: int, capacity: int) -> torch.Tensor:
    batch, heads, _, head_dim = tensor.shape
    grown = torch.zeros(batch, heads, capacity, head_dim, dtype=tensor.dtype, device=tensor.device)
    grown[:, :, :length] = tensor[:, :, :length]
    return grown


@dataclass(frozen=True)
class EncodedImage:
    """A picture after the vision encoder and the image prefill: pass it to ``query`` or ``caption``
    in place of the picture to skip both. Reusable any number of times; never modified."""

    cache: KVCache
    size: tuple[int, int]  # (width, height) of the picture
    crops: int  # crops the vision encoder ran on

    @property
    def nbytes(self) -> int:
        """Bytes of its key/value tensors."""
        return sum(k.numel() * k.element_size() for k in (*self.cache.keys, *self.cache.values))

    @property
    def tokens(self) -> int:
        """Positions it fills in the text model (BOS and the image tokens)."""
        return self.cache.length
