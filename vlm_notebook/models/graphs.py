"""CUDA graphs for the decoding steps of our own loops (SmolVLM's, Qwen2-VL's, native Moondream's).

A decoding step of a small model launches a few hundred GPU operators, each costing the CPU more
time than the GPU spends on it. A step whose shapes never change (the token and its position in
tensors on the device, keys and values written at that position, attention over the whole buffer
through a mask) can be captured once as a CUDA graph and replayed: one launch a token. The
figures with graphs on and off: ``benchmarks/results/gpu_matrix.md``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

_LOG = logging.getLogger("vlm_notebook")

#: Whether a :class:`Replayer` on CUDA replays a CUDA graph (False: operator by operator, to
#: measure what the graph saves, as ``benchmarks/gpu_matrix.py`` does). Read when a step is made.
CUDA_GRAPHS = True

Step = Callable[[], torch.Tensor]


class Replayer:
    """Runs a fixed-shape ``step`` that reads its position from ``position`` (a device tensor) and
    moves it on by one: on CUDA (unless :data:`CUDA_GRAPHS` is off) as a CUDA graph captured at the
    first call and replayed after; elsewhere, or where capturing fails, operator by operator."""

    def __init__(self, step: Step, position: torch.Tensor):
        self._step, self._position = step, position
        #: Whether calls replay a graph; tests set it to run the capturing path off CUDA.
        self.replays = position.device.type == "cuda" and CUDA_GRAPHS
        self._graph: Any = None  # None: not captured yet; False: capturing failed
        self._logits: torch.Tensor | None = None

    def __call__(self) -> torch.Tensor:
        if not self.replays:
            return self._step()
        if self._graph is None:
            start = self._position.clone()
            try:
                self._graph, self._logits = captured(self._step, self._position)
            except RuntimeError as error:  # a GPU or driver that cannot capture: decode as the CPU does
                _LOG.warning("CUDA graphs unavailable (%s); decoding operator by operator.", error)
                self._graph = False
                self._position.copy_(start)
        if self._graph is False:
            return self._step()
        self._graph.replay()
        assert self._logits is not None
        return self._logits.clone()  # the next replay writes over it


def seen_so_far(slots: torch.Tensor, position: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The attention mask (1 x slots) of a fixed-shape step at ``position``: 0 for the slots up to it,
    -inf after (``slots``: ``arange`` of the buffer's capacity on the device)."""
    return torch.where(slots <= position, 0.0, float("-inf")).to(dtype).view(1, -1)


def captured(step: Step, position: torch.Tensor) -> tuple[Any, torch.Tensor]:
    """``step`` captured as a CUDA graph, and the tensor its replays write the logits to. The
    warm-up runs (on a side stream, as capturing asks) write the same position's keys and values
    that the first replay writes again; the position is put back after each."""
    start = position.clone()
    side = torch.cuda.Stream()  # type: ignore[no-untyped-call]
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            step()
            position.copy_(start)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        logits = step()
    return graph, logits
