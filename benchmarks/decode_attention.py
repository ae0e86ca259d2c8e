"""One decoded token's attention on this CPU: torch's fused operator against three plain ones.

    python benchmarks/decode_attention.py [--out FILE]

A decode step attends one new query per head over every position so far. ``fused`` is
``F.scaled_dot_product_attention`` (with ``enable_gqa``), as transformers' "sdpa" attention calls
it; ``three products`` is ``vlm_notebook.models.attention.attention_in_three_products``: the
scores as one batched product per key/value head in fp32, a softmax, and the weighted values,
rounded to the model's format once at the end (``attend_one_query`` there takes it for bf16 and
fp16 on a CPU, the fused operator elsewhere). Both are timed on the same random queries, keys and
values (keys and values read from a larger buffer, as the step's are), at the head layouts of
SmolVLM-256M and Qwen2-VL-2B, in bf16 and fp32, at several lengths; the error is the largest
difference from the same attention in float64. Medians of 200 calls on the current torch threads.

Then whole answers through transformers' ``generate`` (what the generic family decodes with), on
the same-shape random-weight SmolVLM-256M in bf16 after a text prompt of each length: the median
time per new token with the text decoder on "sdpa" and on vlm-notebook's attention
(``attention.attend_with_it``, which uses the three products for the decoded token only);
the median gap between new tokens over two answers each.

Set ``ATEN_CPU_CAPABILITY=avx2`` (and ``ONEDNN_MAX_CPU_ISA=AVX2``) to time the kernels an AVX2-only
CPU runs. Not part of ``make test``.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import torch
import torch.nn.functional as F

from vlm_notebook import cpu, random_checkpoints
from vlm_notebook.models.attention import TRANSFORMERS_NAME, attend_with_it, attention_in_three_products

RESULTS = Path(__file__).resolve().parent / "results"
#: (name, query heads, key/value heads, head size)
LAYOUTS = (("SmolVLM-256M", 9, 3, 64), ("Qwen2-VL-2B", 12, 2, 128))
LENGTHS = (100, 300, 900, 2000)
CALLS = 200
GENERATED = 24


def median_us(call: Callable[[], torch.Tensor]) -> float:
    for _ in range(10):
        call()
    times = []
    for _ in range(CALLS):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def row(layout: tuple[str, int, int, int], dtype: torch.dtype, length: int) -> str:
    name, heads, kv_heads, size = layout
    generator = torch.Generator().manual_seed(length)
    capacity = length + 64
    keys = torch.randn(kv_heads, capacity, size, generator=generator).mul(2).to(dtype)
    values = torch.randn(kv_heads, capacity, size, generator=generator).to(dtype)
    query = torch.randn(1, heads, 1, size, generator=generator).mul(2).to(dtype)
    scale = size**-0.5
    seen_keys, seen_values = keys[:, :length], values[:, :length]

    def fused() -> torch.Tensor:
        return F.scaled_dot_product_attention(
            query, seen_keys[None], seen_values[None], scale=scale, enable_gqa=True
        ).view(heads, size)

    def three() -> torch.Tensor:
        return attention_in_three_products(query, seen_keys, seen_values, scale).view(heads, size)

    exact = F.scaled_dot_product_attention(
        query.double(), seen_keys[None].double(), seen_values[None].double(), scale=scale, enable_gqa=True
    ).view(heads, size)
    errors = [(call().double() - exact).abs().max().item() for call in (fused, three)]
    fused_us, three_us = median_us(fused), median_us(three)
    format_name = str(dtype).removeprefix("torch.")
    return (f"| {name} ({heads}/{kv_heads} heads, {size}) | {format_name} | {length} | {fused_us:.0f} | "
            f"{three_us:.0f} | {fused_us / three_us:.2f} | {errors[0]:.1e} | {errors[1]:.1e} |")


def generate_rows() -> list[str]:
    from transformers import AutoModelForImageTextToText

    directory = random_checkpoints.random_checkpoint("smolvlm-256m", image_splitting=False)
    model = AutoModelForImageTextToText.from_pretrained(directory, dtype=torch.bfloat16).eval()
    attend_with_it(model, None)  # registers vlm-notebook's attention with transformers, for the decoder only
    decoder = model.get_decoder()
    rows = []
    for length in LENGTHS[:3]:
        prompt = torch.randint(0, 1000, (1, length), generator=torch.Generator().manual_seed(length))
        gaps: dict[str, list[float]] = {"sdpa": [], TRANSFORMERS_NAME: []}
        for implementation in ("sdpa", TRANSFORMERS_NAME, "sdpa", TRANSFORMERS_NAME):  # two rounds each
            decoder.set_attn_implementation(implementation)
            times = TokenTimes()
            # The mask given: generate would take any pad token id among the random ids for padding.
            model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=GENERATED,
                           min_new_tokens=GENERATED, do_sample=False, streamer=times)
            gaps[implementation] += [later - earlier for earlier, later in itertools.pairwise(times.at)]
        sdpa_ms, ours_ms = (statistics.median(gaps[name]) * 1e3 for name in ("sdpa", TRANSFORMERS_NAME))
        rows.append(f"| {length} | {sdpa_ms:.1f} | {ours_ms:.1f} | {sdpa_ms / ours_ms:.2f} |")
        print(rows[-1], flush=True)
    return rows


class TokenTimes:
    """A ``generate`` streamer that notes when each new token arrives (the prompt comes first)."""

    def __init__(self) -> None:
        self.at: list[float] = []
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if self.prompt_seen:
            self.at.append(time.perf_counter())
        self.prompt_seen = True

    def end(self) -> None:
        pass


def machine() -> str:
    capability = os.environ.get("ATEN_CPU_CAPABILITY")
    forced = f" · ATEN_CPU_CAPABILITY={capability}" if capability else ""
    return (f"{datetime.now(UTC).isoformat(timespec='seconds')} · {cpu.described()} · "
            f"{torch.get_num_threads()} torch threads · torch {torch.__version__}{forced}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=RESULTS / "decode_attention.md")
    args = parser.parse_args(argv)
    lines = [
        "# One decoded token's attention: torch's fused operator against three plain ones", "",
        machine() + f" · medians of {CALLS} calls · `python benchmarks/decode_attention.py`", "",
        "| heads | format | positions | fused us | three products us | fused / three | fused error | "
        "three products error |",
        "|---|---|---|---|---|---|---|---|",
    ]
    with torch.inference_mode():
        for layout in LAYOUTS:
            for dtype in (torch.bfloat16, torch.float32):
                for length in LENGTHS:
                    lines.append(row(layout, dtype, length))
                    print(lines[-1], flush=True)
    lines += ["", "Errors: the largest difference from float64 attention on the same inputs.", "",
              f"`generate` of the random-weight SmolVLM-256M in bf16 (median gap between tokens, two "
              f"answers of {GENERATED} new tokens each):", "",
              "| prompt tokens | ms a token, sdpa | ms a token, vlm-notebook's attention | sdpa / ours |",
              "|---|---|---|---|"]
    with torch.inference_mode():
        lines += generate_rows()
    lines += ["", "See the script's docstring for how each figure is taken."]
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
