"""A small, generic, deterministic training loop for the tiny ``shapes-*`` checkpoints.

The loop knows nothing about a model family: it takes a model whose forward returns an
object with a ``.loss`` (as every transformers model does when given ``labels``) and a
callable that makes one batch from a ``random.Random``. AdamW, linear warmup then cosine
decay, gradient clipping, periodic logging.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

IGNORE_INDEX = -100

Batch = dict[str, torch.Tensor]
BatchMaker = Callable[[random.Random], Batch]
Logger = Callable[[str], None]


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser and schedule settings; ``seed`` fixes the whole run."""

    steps: int
    lr: float = 3e-3
    warmup_steps: int = 100
    final_lr_ratio: float = 0.02
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    clip_norm: float = 1.0
    seed: int = 0
    log_every: int = 100


@dataclass
class TrainResult:
    """What a run produced: the loss of every step and the wall time in seconds."""

    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class Trained:
    """What a recipe's ``train_model`` gives back: the processor, the trained model and both stages' results."""

    processor: Any
    model: Any
    vision: TrainResult
    text: TrainResult


def save(processor: Any, model: Any, directory: Path) -> None:
    """Write model weights, configs and processor files with ``save_pretrained``."""
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)


def seed_everything(seed: int) -> None:
    """Seed torch's and Python's global generators (call before building the model)."""
    random.seed(seed)
    torch.manual_seed(seed)


@contextmanager
def deterministic_algorithms() -> Iterator[None]:
    """Make torch use deterministic kernels inside the block, then restore the setting."""
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


def answer_labels(input_ids: torch.Tensor, attention_mask: torch.Tensor, answer_lengths: Sequence[int]) -> torch.Tensor:
    """Labels that train on the answer only: the last ``n`` real tokens of each row.

    Every other position (prompt, image tokens, padding on either side) is ``-100``.
    """
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    for row, length in enumerate(answer_lengths):
        real = attention_mask[row].nonzero().flatten()
        answer = real[len(real) - length :]
        labels[row, answer] = input_ids[row, answer]
    return labels


def lr_factor(step: int, config: TrainConfig) -> float:
    """Multiplier of the peak learning rate: linear warmup, then cosine to ``final_lr_ratio``."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    span = max(1, config.steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return config.final_lr_ratio + (1.0 - config.final_lr_ratio) * cosine


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on biases, norms or other vectors)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas)


def _step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: Batch, clip_norm: float) -> float:
    optimizer.zero_grad(set_to_none=True)
    loss: torch.Tensor = model(**batch).loss
    loss.backward()  # type: ignore[no-untyped-call]
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
    optimizer.step()
    return float(loss.detach())


def train(model: torch.nn.Module, make_batch: BatchMaker, config: TrainConfig, log: Logger = print) -> TrainResult:
    """Train ``model`` in place for ``config.steps`` steps; batches come from ``make_batch``.

    ``make_batch`` receives a ``random.Random(config.seed)`` shared by the whole run and
    must return keyword arguments for the model, including ``labels``.
    """
    rng = random.Random(config.seed)
    optimizer = make_optimizer(model, config)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, config))
    result = TrainResult()
    start = time.perf_counter()
    model.train()
    with deterministic_algorithms():
        for step in range(config.steps):
            result.losses.append(_step(model, optimizer, make_batch(rng), config.clip_norm))
            schedule.step()
            if (step + 1) % config.log_every == 0 or step + 1 == config.steps:
                log(_progress(step + 1, config, result.losses, time.perf_counter() - start))
    model.eval()
    result.seconds = time.perf_counter() - start
    return result


def _progress(step: int, config: TrainConfig, losses: list[float], seconds: float) -> str:
    recent = losses[-config.log_every :]
    mean = sum(recent) / len(recent)
    lr = config.lr * lr_factor(step - 1, config)
    return f"step {step}/{config.steps}  loss {mean:.4f}  lr {lr:.2e}  {seconds:.0f}s"


def load_start_weights(processor: Any, directory: Path, generation: Any) -> Any:
    """A saved checkpoint's weights to start from (``--init-from``), with ``generation`` as its
    generation config; its tokenizer must be ``processor``'s."""
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(directory, dtype=torch.float32)
    if model.config.text_config.vocab_size != len(processor.tokenizer):
        raise ValueError(f"{directory} has another vocabulary than this recipe's tokenizer")
    model.generation_config = generation
    return model
