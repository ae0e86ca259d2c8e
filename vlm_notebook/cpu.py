"""CPU settings that respect the user's time: threads per phase, int8 weights, bf16 detection.

Measured figures are in ``benchmarks/results/`` (``cpu_speed_smolvlm.md`` has the side-by-side
run, with the machine it ran on); the reasons, which hold across machines:

- The vision encoder and the prefill are large matrix products that gain from every physical
  core, so they run on ``physical_cores()`` threads (torch's own default). Under heavy load from
  other programs one thread can be as fast; on a quiet machine all cores win.
- A decode step is a thousand small operations, memory-bound (it reads every weight once), and
  each parallel region waits for every thread, a busy core included. So decoding runs on one
  thread by default.

Both are process-wide torch settings, changed only while a model of this package works and put
back afterwards; ``set_thread_policy(prefill=..., decode=...)`` changes them (on an idle machine
with many cores, ``decode=physical_cores()`` may be faster). ``has_fast_bf16()`` reads the CPU's
flags: ``vlm_notebook.runtime`` picks bf16 where it is true and fp32 elsewhere (bf16 matrix
products are tens of times slower without those instructions). ``quantize_int8`` (``int8=True``
on a model) is opt-in: a decode step reads a quarter of the bytes, but answers can change.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import torch

_CPUINFO = Path("/proc/cpuinfo")


@cache
def physical_cores() -> int:
    """Physical cores of this machine (hyper-threads not counted); the logical count if unknown."""
    try:
        text = _CPUINFO.read_text()
    except OSError:
        return os.cpu_count() or 1
    cores: set[tuple[str, str]] = set()
    package = core = ""
    for line in text.splitlines():
        name, _, value = (part.strip() for part in line.partition(":"))
        if name == "physical id":
            package = value
        elif name == "core id":
            core = value
            cores.add((package, core))
    return len(cores) or os.cpu_count() or 1


@cache
def has_fast_bf16() -> bool:
    """Whether the CPU has bf16 matrix instructions (AMX or AVX-512 BF16)."""
    try:
        flags = _CPUINFO.read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


@dataclass(frozen=True)
class ThreadPolicy:
    """Torch threads for the prefill (vision encoder and prompt) and for each decode step."""

    prefill: int
    decode: int

    def __post_init__(self) -> None:
        for name in ("prefill", "decode"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} threads must be a whole number of at least 1, got {value!r}.")


def default_thread_policy() -> ThreadPolicy:
    """Prefill on every physical core, decode on one; ``OMP_NUM_THREADS``, when set, caps both."""
    cap = _env_threads()
    prefill = physical_cores() if cap is None else cap
    return ThreadPolicy(prefill=prefill, decode=1)


def _env_threads() -> int | None:
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) >= 1 else None


_policy = default_thread_policy()
_policy_lock = threading.Lock()


def thread_policy() -> ThreadPolicy:
    """The threads this package's models use while generating."""
    return _policy


def set_thread_policy(*, prefill: int | None = None, decode: int | None = None) -> ThreadPolicy:
    """Change the threads for the prefill and/or decoding (for every model); returns the new policy."""
    global _policy
    with _policy_lock:
        _policy = ThreadPolicy(
            prefill=prefill if prefill is not None else _policy.prefill,
            decode=decode if decode is not None else _policy.decode,
        )
        return _policy


@contextmanager
def phase_threads(policy: ThreadPolicy | None = None) -> Iterator[Callable[[], None]]:
    """For a model whose phases the caller runs by hand: ``policy.prefill`` threads while the block
    runs, ``policy.decode`` from when the yielded function is called; the count is put back after."""
    chosen = policy or _policy
    before = torch.get_num_threads()
    torch.set_num_threads(chosen.prefill)
    try:
        yield lambda: torch.set_num_threads(chosen.decode)
    finally:
        torch.set_num_threads(before)


@contextmanager
def threads_by_phase(model: torch.nn.Module, policy: ThreadPolicy | None = None) -> Iterator[Callable[[], None]]:
    """While the block runs, ``model`` prefills on ``policy.prefill`` threads and decodes (one new
    token per call) on ``policy.decode``; torch's thread count is put back afterwards. Yields, as
    ``phase_threads`` does, the switch to decoding threads for steps that bypass ``model``."""
    chosen = policy or _policy

    def choose(module: torch.nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        decoding = isinstance(ids, torch.Tensor) and ids.dim() == 2 and ids.shape[1] == 1
        wanted = chosen.decode if decoding else chosen.prefill
        if torch.get_num_threads() != wanted:
            torch.set_num_threads(wanted)

    with phase_threads(chosen) as to_decoding:
        handle = model.register_forward_pre_hook(choose, with_kwargs=True)
        try:
            yield to_decoding
        finally:
            handle.remove()


def quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    """Every linear layer of ``model`` with int8 weights and int8 products (dynamic quantization),
    in place. Faster on a CPU (weights read per token are 4x smaller) but the answers can change.

    Each output row of a weight gets its own scale (per channel), so a row of large weights does
    not cost the others their precision."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():  # torch points eager quantization users to torchao; it still works
        warnings.simplefilter("ignore")
        quantized: torch.nn.Module = quantize_dynamic(  # type: ignore[no-untyped-call]
            model, {torch.nn.Linear: per_channel_dynamic_qconfig}, inplace=True
        )
    return quantized
