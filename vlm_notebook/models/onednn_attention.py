"""Many queries' attention with no mask as one oneDNN partition, on a CPU.

oneDNN, the library under torch's CPU matrix products, runs a scaled dot-product attention (the
scores' product, their scaling, their softmax and the weighted values) as one fused partition when
TorchScript's oneDNN fusion finds that pattern in a traced graph: in bf16 on a CPU with bf16
matrix instructions it takes well under the time of three separate products and a softmax
(``benchmarks/results/vision_attention.md``). :func:`attend` traces the attention once for each
shape it meets (in row-major order, copied there where needed), has TorchScript fuse it, and keeps
what it fused. Where fusion does not happen (a torch without TorchScript's oneDNN fusion, or one
that does not fuse it), and for the shapes met after the first :data:`MOST_SHAPES`, it says so and
the caller attends its own way. In a process each shape always takes the same way, so the same
inputs give the same numbers whatever came after them.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable
from typing import Any

import torch

#: How many shapes a process traces at most: each trace leaves memory behind that dropping it does
#: not give back (about 10 MB a shape at Qwen2-VL-2B's vision heads, on this torch), so shapes met
#: after these attend the caller's way (Qwen2-VL's encoder meets a new shape with each picture size).
MOST_SHAPES = 8
#: Calls before TorchScript's profiling executor has optimised a traced function (one to profile).
_CALLS_TO_OPTIMISE = 3
_lock = threading.Lock()
#: For each shape traced: the fused function, or None where fusion did not happen.
_fused: dict[tuple[Any, ...], Callable[..., torch.Tensor] | None] = {}


def attend(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scale: float) -> torch.Tensor | None:
    """Every query over every key: ``query``, ``keys`` and ``values`` batch x heads x positions x
    dim on a CPU, a key/value head for each query head, no gradients. The result as torch's fused
    operator returns it (its scores rounded to the inputs' format before their softmax, as
    :func:`~vlm_notebook.models.attention.scores_in_bf16` rounds them), or None where no fused
    partition runs it."""
    if not _fits(query, keys, values):
        return None
    key = (*(tuple(part.shape) for part in (query, keys, values)), query.dtype, scale)
    if key not in _fused:
        with _lock:
            if key not in _fused and len(_fused) < MOST_SHAPES:
                return _first_call(key, _row_major(query), _row_major(keys), _row_major(values), scale)
    fused = _fused.get(key)
    if fused is None:
        return None
    return fused(_row_major(query), _row_major(keys), _row_major(values)).transpose(1, 2)


def available() -> bool:
    """Whether this torch has TorchScript's oneDNN fusion at all."""
    return all(hasattr(torch.jit, name) for name in ("trace", "enable_onednn_fusion", "onednn_fusion_enabled"))


def _fits(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> bool:
    parts = (query, keys, values)
    return (
        available()
        and all(part.device.type == "cpu" and part.dim() == 4 and not part.requires_grad for part in parts)
        and query.shape[:2] == keys.shape[:2] == values.shape[:2]
    )


def _row_major(part: torch.Tensor) -> torch.Tensor:
    """``part`` in row-major order, with the strides of a new tensor in every dimension: the one
    layout that the partition is traced and run with. TorchScript's oneDNN fusion gets other layouts
    wrong in this torch (a batch of one whose stride is not the whole tensor's, or a shape traced
    before in another layout: results far from the attention's, seen at Qwen2-VL's vision heads)."""
    if part.stride() == torch.empty(part.shape, device="meta").stride():
        return part
    return torch.empty(part.shape, dtype=part.dtype).copy_(part)


def _first_call(
    key: tuple[Any, ...], query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scale: float
) -> torch.Tensor | None:
    """Trace the attention for this shape, run it until TorchScript has optimised it with
    oneDNN's fusion on (then off again, as it was), and keep it if the partition was fused."""
    def attention(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        scores = torch.matmul(query, keys.transpose(-1, -2)) * scale
        return torch.matmul(torch.softmax(scores, dim=-1), values).transpose(1, 2).contiguous()

    was_on = torch.jit.onednn_fusion_enabled()  # type: ignore[no-untyped-call]
    torch.jit.enable_onednn_fusion(True)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.trace.* is deprecated")
            traced = torch.jit.trace(attention, (query, keys, values), check_trace=False)  # type: ignore[no-untyped-call]
        for _ in range(_CALLS_TO_OPTIMISE):
            mixed = traced(query, keys, values)
        fused = "oneDNNFusionGroup" in str(traced.graph_for(query, keys, values))
    except RuntimeError:
        fused = False
    finally:
        torch.jit.enable_onednn_fusion(was_on)
    _fused[key] = traced if fused else None
    return mixed.transpose(1, 2) if fused else None
