"""Where a decode step of SmolVLM-256M goes on this CPU: the weights it reads against what memory streams.

    python benchmarks/decode_bandwidth.py [--steps N] [--out FILE]

A decode step multiplies one token's vector by every linear weight of the text model and by the
output layer: it reads all of them once, so memory bandwidth, not arithmetic, sets its floor.
In one run, on the same-shape random-weight SmolVLM-256M in the CPU's default number format:

- what memory streams: the sum of a 512 MB tensor in the weights' format, best of five, on one
  thread and on every core;
- the bytes one step reads (the linear weights of the text model and the output layer);
- our step (``LlamaStep``, as answers decode), the median over ``--steps`` steps, and the same
  step on the plain weights (without the transposed copies an fp32 model decodes from:
  ``vlm_notebook.cpu.DecodingLinear``);
- the same step's matrix products alone: the same calls in the same order on vectors of the same
  size, so "other" is what the step does besides them (norms, rotary, attention, the
  Python between operations);
- that other work alone: the step with each product answered by its output made beforehand.
  Where it takes less than "other", the same operations run slower between the products (which
  stream the weights through the caches) than back to back.

The floor is bytes / streaming bandwidth. Random weights: only the times count.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import torch

from vlm_notebook import cpu, shapes
from vlm_notebook.models import SmolVLM
from vlm_notebook.models.llama_step import LlamaStep, llama_text_model
from vlm_notebook.random_checkpoints import random_checkpoint

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "decode_bandwidth.md"
STREAMED_BYTES = 512 << 20
Product = Callable[[torch.Tensor], torch.Tensor]
LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def streaming_gb_per_s(dtype: torch.dtype) -> float:
    """GB/s at which torch sums a tensor of ``dtype`` too large for any cache (best of five). In the
    weights' own format: on a CPU without bf16 instructions, summing bf16 is bound by converting it,
    not by memory."""
    data = torch.ones(STREAMED_BYTES // dtype.itemsize, dtype=dtype)
    data.sum()
    best = min(_seconds(data.sum) for _ in range(5))
    return STREAMED_BYTES / best / 1e9


def _seconds(work: Callable[[], object]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def step_inputs(module: Any) -> dict[str, torch.nn.Linear]:
    """Each matrix product of a step's layer (by its name in the step) and a linear of the decoder
    layer ``module`` that reads the same input, for its width."""
    attention, mlp = module.self_attn, module.mlp
    return {"query_key_value": attention.q_proj, "output": attention.o_proj, "gate_and_up": mlp.gate_proj,
            "down": mlp.down_proj}


def products(step: LlamaStep, text_model: Any, lm_head: Any) -> tuple[list[Callable[[], object]], int]:
    """Calls of every matrix product of one step, as the step makes them (queries, keys and values
    as one call where it groups them, and gate and up), in its order, and the bytes of their weights."""
    dtype = text_model.embed_tokens.weight.dtype
    calls: list[Callable[[], object]] = []
    for layer, module in zip(step._layers, text_model.layers, strict=True):
        calls += [partial(getattr(layer, name), torch.randn(1, linear.in_features, dtype=dtype))
                  for name, linear in step_inputs(module).items()]
    calls.append(partial(lm_head, torch.randn(1, 1, lm_head.in_features, dtype=dtype)))
    modules = [layer.get_submodule(name) for layer in text_model.layers for name in LINEARS] + [lm_head]
    weight_bytes = sum(module.in_features * module.out_features * dtype.itemsize for module in modules)
    return calls, weight_bytes


def without_products(step: LlamaStep, text_model: Any, lm_head: Any) -> LlamaStep:
    """``step`` with each matrix product answered by its output on a random vector, made once."""
    dtype = text_model.embed_tokens.weight.dtype

    def answered(product: Product, inputs: int) -> Product:
        output = product(torch.randn(1, inputs, dtype=dtype))
        return lambda _: output

    step._layers = [
        dataclasses.replace(layer, **{name: answered(getattr(layer, name), linear.in_features)
                                      for name, linear in step_inputs(module).items()})
        for layer, module in zip(step._layers, text_model.layers, strict=True)
    ]
    logits = lm_head(torch.randn(1, 1, lm_head.in_features, dtype=dtype))
    step._head = lambda _: logits  # type: ignore[assignment]  # a product's stand-in, not a module
    return step


def run_all(calls: list[Callable[[], object]]) -> None:
    for call in calls:
        call()


def median_ms(work: Callable[[], object], steps: int) -> float:
    work()
    return statistics.median(_seconds(work) for _ in range(steps)) * 1e3


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    model = SmolVLM(str(random_checkpoint("smolvlm-256m", image_splitting=False)))
    model.load()
    picture = shapes.draw(shapes.Scene("circle", "red", "white")).image
    inputs = model._inputs(picture, "Describe this image.")
    text_model: Any = llama_text_model(model.model)
    assert text_model is not None, "SmolVLM-256M's text model is a Llama"
    counts = sorted({1, cpu.physical_cores()})
    capacity = inputs["input_ids"].shape[1] + args.steps + 2
    measured: dict[int, tuple[float, float, float, float]] = {}
    with torch.inference_mode():
        prompt = model.model(**inputs, use_cache=True, logits_to_keep=1)
        for threads in counts:
            torch.set_num_threads(threads)
            bandwidth = streaming_gb_per_s(text_model.embed_tokens.weight.dtype)
            step = LlamaStep(text_model, model.model.lm_head, prompt.cache, capacity)
            calls, weight_bytes = products(step, text_model, model.model.lm_head)
            products_ms = median_ms(partial(run_all, calls), args.steps)
            step_ms = median_ms(partial(step, 5), args.steps)
            rest = without_products(LlamaStep(text_model, model.model.lm_head, prompt.cache, capacity), text_model,
                                    model.model.lm_head)
            measured[threads] = (bandwidth, step_ms, products_ms, median_ms(partial(rest, 5), args.steps))
        cpu.unpack_linears(model.model)  # the same step on the plain weights, for comparison
        rows = []
        for threads in counts:
            torch.set_num_threads(threads)
            step = LlamaStep(text_model, model.model.lm_head, prompt.cache, capacity)
            bandwidth, step_ms, products_ms, rest_ms = measured[threads]
            plain_ms = median_ms(partial(step, 5), args.steps)
            rows.append((threads, bandwidth, step_ms, products_ms, rest_ms, weight_bytes / bandwidth / 1e6, plain_ms))
    write(args.out, rows, weight_bytes, model.dtype or "", args.steps)


def write(out: Path, rows: list[tuple[int, float, float, float, float, float, float]], weight_bytes: int, dtype: str,
          steps: int) -> None:
    lines = [
        "# A decode step of SmolVLM-256M on this CPU: weights read against what memory streams",
        "",
        f"{datetime.now(UTC).isoformat(timespec='seconds')} · {cpu.described()}"
        f" · {os.cpu_count()} cores online · load average at end "
        f"{[round(x, 2) for x in os.getloadavg()]} · torch {torch.__version__} · weights in {dtype} · "
        f"medians of {steps} steps · `python benchmarks/decode_bandwidth.py`",
        "",
        f"One step reads {weight_bytes / 1e6:.0f} MB of linear weights (the text model's and the output layer's).",
        "",
        "| threads | memory streams GB/s | floor ms (bytes / streaming) | our step ms | its matrix products ms "
        "| other ms | other work alone ms | products' GB/s | step / floor | step on plain weights ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for threads, bandwidth, step_ms, products_ms, rest_ms, floor_ms, plain_ms in rows:
        lines.append(
            f"| {threads} | {bandwidth:.1f} | {floor_ms:.1f} | {step_ms:.1f} | {products_ms:.1f} "
            f"| {step_ms - products_ms:.1f} | {rest_ms:.1f} | {weight_bytes / products_ms / 1e6:.1f} "
            f"| {step_ms / floor_ms:.2f} | {plain_ms:.1f} |"
        )
    lines += ["", "Random weights: only the times count. See the script's docstring for how each figure is taken.", ""]
    out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
