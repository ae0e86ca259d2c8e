"""Forward hooks that hold a model's worker thread at a chosen pass, for tests of cancelling and
streaming that must not depend on how fast the worker runs."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch


@contextmanager
def hook(module: torch.nn.Module, function: Callable[..., None], *, pre: bool = True) -> Iterator[None]:
    handle = module.register_forward_pre_hook(function) if pre else module.register_forward_hook(function)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def held_at_call(module: torch.nn.Module, call: int) -> Iterator[tuple[threading.Event, threading.Event]]:
    """Hold the ``call``-th forward of ``module`` (on the worker) until ``release`` is set.

    On a model's output layer, call N is token N once the picture's work is stored (encoding a
    new picture runs the output layer once more)."""
    reached, release = threading.Event(), threading.Event()
    calls = 0

    def hold(module: torch.nn.Module, args: object) -> None:
        nonlocal calls
        calls += 1
        if calls == call:
            reached.set()
            release.wait(10)

    with hook(module, hold):
        try:
            yield reached, release
        finally:
            release.set()
