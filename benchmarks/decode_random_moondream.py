"""Decoding speed of a full-size, random-weight Moondream 2: fp32 against ``int8=True``, one run.

    python benchmarks/decode_random_moondream.py [--tokens N] [--out FILE]

Uses the random checkpoint of ``ttft_random_moondream.py`` (built there once). The vision
encoder is skipped: a random 730-token image prefix (BOS + 729 image tokens, as a 640x480
picture gives) is prefilled, then a question is answered with ``--tokens`` new tokens, on the
package's thread policy. The checkpoint is loaded once in fp32 and once with ``int8=True`` (as a
user loads it), and on a CPU with bf16 instructions (where bf16 is the default) once in bf16; the
same request is timed on each. Random weights: only the times count.
"""

from __future__ import annotations

import argparse
import itertools
import os
import queue
import statistics
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from ttft_random_moondream import build_random_checkpoint, checkpoint_dir

from vlm_notebook import cpu
from vlm_notebook.models.moondream import EncodedImage, Moondream
from vlm_notebook.models.moondream.inference import generate_text, prefill_image
from vlm_notebook.options import GenerationOptions
from vlm_notebook.stream import StreamStats, TokenSink

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "decode_random_moondream.md"
IMAGE_TOKENS = 729  # with BOS, a prefix of 730 tokens, as a 640x480 picture gives


def random_prefix(model: Moondream) -> EncodedImage:
    """A prefilled image prefix of random image embeddings (what ``encode_image`` would leave)."""
    dim = model.network.config.text.dim
    embeddings = torch.randn(IMAGE_TOKENS, dim, generator=torch.Generator().manual_seed(0)) * 0.02
    embeddings = embeddings.to(model.network.text.wte.dtype)
    with torch.inference_mode(), model.runtime.phases():
        return prefill_image(model.network, embeddings, (640, 480), crops=9)


def decode_steps(model: Moondream, tokens: int) -> list[float]:
    """Seconds between consecutive tokens of one answer on a fresh random prefix."""
    encoded = random_prefix(model)
    options = GenerationOptions(max_new_tokens=tokens)
    ids = model._query_ids("What is in this picture?")
    stats = StreamStats()
    sink = TokenSink(stats, queue.Queue(), threading.Event())  # records each token's time in stats
    with torch.inference_mode(), model.runtime.phases() as decoding:
        token_ids = generate_text(model.network, encoded, ids, options, sink, before_step=decoding)
    if len(token_ids) < 3:
        raise SystemExit(f"the random model answered only {len(token_ids)} tokens: too few steps to time")
    return [later - earlier for earlier, later in itertools.pairwise(stats.token_times)]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    load = os.getloadavg()
    checkpoint = str(build_random_checkpoint(checkpoint_dir(None)))
    int8 = "int8 (`int8=True`, opt-in)"
    # fp32 as the baseline on every CPU (dtype="auto" is bf16 on one with bf16 instructions).
    settings: dict[str, dict[str, Any]] = {"fp32": {"dtype": "float32"}, int8: {"int8": True}}
    if cpu.has_fast_bf16():
        settings["bf16 (the default on this CPU)"] = {"dtype": "bfloat16"}
    gaps: dict[str, list[float]] = {}
    for label, setting in settings.items():  # one model at a time: a full-size Moondream 2 is large
        model = Moondream(checkpoint, **setting)
        model.load()
        gaps[label] = decode_steps(model, args.tokens)
        del model
    medians = {label: statistics.median(steps) * 1e3 for label, steps in gaps.items()}
    rows = [f"| {label} | {ms:.0f} | {1e3 / ms:.2f} | {len(gaps[label])} |" for label, ms in medians.items()]
    fp32_ms, int8_ms = medians["fp32"], medians[int8]
    lines = [
        "# Decoding: random-weight Moondream 2 (full size, native), fp32 against int8 (and bf16), CPU",
        "",
        f"{datetime.now(UTC).isoformat(timespec='seconds')} · torch {torch.__version__} · "
        f"load average at start {[round(x, 2) for x in load]} · `python benchmarks/decode_random_moondream.py`",
        "",
        f"Machine: {os.cpu_count()} cores of {cpu.described()}.",
        "",
        f"A {IMAGE_TOKENS + 1}-token random image prefix, one question, {args.tokens} new tokens, "
        f"decoding threads as the package chooses them ({cpu.thread_policy()}).",
        "Medians of the gaps between tokens. Random weights: only the times count.",
        "",
        "| weights | decode step (ms) | tokens/s | steps measured |",
        "|---|---|---|---|",
        *rows,
        "",
        f"int8 decodes **{fp32_ms / int8_ms:.2f}x** as fast as fp32 in this run.",
        "",
    ]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
