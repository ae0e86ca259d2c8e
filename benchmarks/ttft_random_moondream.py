"""Time to first token of a full-size, random-weight Moondream 2 (native) on this machine.

    python benchmarks/ttft_random_moondream.py [--runs N] [--out FILE]

Builds once, under ~/.cache/vlm-notebook/random/moondream2-seed0/, a checkpoint with the
published module tree and sizes of vikhyatk/moondream2 (2025-06-21: 1.93 B parameters; stored
in bf16, about 3.9 GB) with random weights and a stand-in byte-level tokenizer, loads it with
``Moondream(dir)`` (the CPU's default format: bf16 where the CPU has bf16 instructions, fp32
elsewhere, about 7.7 GB) and times, on a synthetic 640x480 picture:

1. a first question on the picture: overlapping crops, the vision encoder on every crop, the
   image prefill (BOS + 729 image tokens) and the question, streamed;
2. ``encode_image`` alone (the same vision pass and image prefill, done once; the model's store
   of encoded pictures is emptied first, or it would hand back the first question's work);
3. follow-up questions on that encoded image, streamed: only the question is prefilled.

Random weights: the text is meaningless, only the times count. Nothing here asserts on a time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from tokenizers import Tokenizer

from vlm_notebook import cpu
from vlm_notebook.models.moondream import Moondream, MoondreamConfig
from vlm_notebook.models.moondream.network import MoondreamCheckpoint
from vlm_notebook.training.tokenizer import build_tokenizer

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "ttft_random_moondream.md"
QUESTIONS = ("What is in this picture?", "What colour is the sky?", "How many people are there?")
SPECIAL_TOKENS = [f"<|special_{i}|>" for i in range(10)]  # ids 0..9, as the published templates expect


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=2, help="follow-up questions measured (default 2)")
    parser.add_argument("--max-new-tokens", type=int, default=8, help="tokens to generate (default 8)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"markdown file (default {DEFAULT_OUT})")
    parser.add_argument("--cache-dir", type=Path, default=None, help="where the random checkpoint is kept")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.max_new_tokens < 2 or (args.threads or 1) < 1:
        parser.error("need --runs >= 1, --max-new-tokens >= 2 and --threads >= 1")
    return args


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def checkpoint_dir(cache_dir: Path | None) -> Path:
    root = cache_dir or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vlm-notebook" / "random"
    return root / "moondream2-seed0"


def build_random_checkpoint(directory: Path) -> Path:
    """Random full-size weights (seed 0) with the published names, bf16 on disk; built once."""
    if (directory / "model.safetensors").is_file():
        return directory
    log(f"building a random full-size Moondream 2 in {directory} (once)")
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    root = MoondreamCheckpoint(MoondreamConfig())
    with torch.no_grad():
        root.model.text.wte.normal_(std=0.02)
        root.model.region.coord_features.normal_(std=1.0)
        root.model.region.size_features.normal_(std=1.0)
    tensors = {name: t.detach().to(torch.bfloat16).contiguous() for name, t in root.state_dict().items()}
    del root
    tokenizer = stand_in_tokenizer(MoondreamConfig().text.vocab_size)
    tokenizer.save(str(directory / "tokenizer.json"))
    config = {"model_type": "moondream1", "config": {}, "tokenizer_file": "tokenizer.json"}
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file(tensors, str(directory / "model.safetensors.partial"), metadata={"format": "pt"})
    (directory / "model.safetensors.partial").rename(directory / "model.safetensors")
    return directory


def _stand_in_corpus() -> list[str]:
    words = ("the", "a", "picture", "of", "sky", "people", "colour", "what", "is", "in", "how", "many", "there")
    return [*QUESTIONS, *words, *(f" {word}" for word in words)]


def stand_in_tokenizer(vocab_size: int) -> Tokenizer:
    """A byte-level BPE padded with filler words to the model's vocabulary, so that any id
    the random model generates decodes to some text."""
    tokenizer = build_tokenizer(_stand_in_corpus(), SPECIAL_TOKENS, vocab_size=1024)
    tokenizer.add_tokens([f"<w{i}>" for i in range(vocab_size - tokenizer.get_vocab_size())])
    return tokenizer


def synthetic_picture(width: int = 640, height: int = 480) -> Image.Image:
    """A deterministic RGB picture: colour gradients with a little noise (content does not matter)."""
    x = np.linspace(0.0, 1.0, width)[None, :]
    y = np.linspace(0.0, 1.0, height)[:, None]
    noise = np.random.default_rng(0).uniform(-0.05, 0.05, (height, width, 3))
    planes = np.stack([x + 0 * y, y + 0 * x, 1.0 - (x + y) / 2], axis=-1) + noise
    return Image.fromarray((np.clip(planes, 0.0, 1.0) * 255).astype(np.uint8), "RGB")


def streamed(model: Moondream, image: Any, question: str, max_new_tokens: int) -> dict[str, Any]:
    stream = model.query(image, question, stream=True, max_new_tokens=max_new_tokens)
    for _ in stream:
        pass
    stats = stream.stats
    return {
        "ttft": stats.time_to_first_token,
        "decode": stats.median_inter_token_latency,
        "end_to_end": stats.end_time,
        "tokens": stats.tokens,
        "prompt_tokens": stats.prompt_tokens,
    }


def measure(args: argparse.Namespace) -> dict[str, Any]:
    directory = build_random_checkpoint(checkpoint_dir(args.cache_dir))
    started = time.perf_counter()
    model = Moondream(str(directory))
    model.load()
    load_seconds = time.perf_counter() - started
    log(f"loaded in {load_seconds:.1f} s")
    picture = synthetic_picture()
    first = streamed(model, picture, QUESTIONS[0], args.max_new_tokens)
    log(f"first question: TTFT {first['ttft']:.2f} s")
    model.image_cache.clear()
    started = time.perf_counter()
    encoded = model.encode_image(picture)
    encode_seconds = time.perf_counter() - started
    log(f"encode_image: {encode_seconds:.2f} s ({encoded.crops} crops)")
    follow_ups = []
    for index in range(args.runs):
        follow_ups.append(streamed(model, encoded, QUESTIONS[1 + index % 2], args.max_new_tokens))
        log(f"follow-up {index + 1}: TTFT {follow_ups[-1]['ttft']:.2f} s")
    return {"load": load_seconds, "first": first, "encode": encode_seconds, "crops": encoded.crops,
            "follow_ups": follow_ups, "dtype": model.dtype}


def _cell(value: float | None, scale: float = 1.0, digits: int = 2) -> str:
    return "-" if value is None else f"{value * scale:.{digits}f}"


def _row(label: str, run: dict[str, Any]) -> str:
    cells = [label, str(run["prompt_tokens"]), str(run["tokens"]), _cell(run["ttft"]),
             _cell(run["decode"], 1000.0, 0), _cell(run["end_to_end"])]
    return "| " + " | ".join(cells) + " |"


def report(args: argparse.Namespace, result: dict[str, Any], load_before: tuple[float, ...]) -> str:
    first, follow_ups = result["first"], result["follow_ups"]
    ratio = first["ttft"] / statistics.median(run["ttft"] for run in follow_ups)
    command = " ".join(["python benchmarks/ttft_random_moondream.py", *sys.argv[1:]])
    lines = [
        "# Time to first token: random-weight Moondream 2 (full size, native), CPU",
        "",
        "> **Random weights: the text is meaningless, only the times count.** The checkpoint has the",
        "> published module tree and sizes of vikhyatk/moondream2 (2025-06-21; 1.93 B parameters), random",
        f"> weights and a stand-in byte-level tokenizer; `Moondream(dir)` loads it in {result['dtype']}"
        " (the CPU's default).",
        "",
        f"- command: `{command}`",
        f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"- machine: {os.cpu_count()} cores, `{platform.machine()}`; torch {torch.__version__}"
        f" (torch threads: {torch.get_num_threads()}), {result['dtype']}; {cpu.described()}",
        f"- load average (1, 5, 15 min) at the start: {', '.join(f'{v:.2f}' for v in load_before)};"
        f" at the end: {', '.join(f'{v:.2f}' for v in os.getloadavg())} (a shared machine: times are noisy)",
        f"- picture: synthetic 640x480 RGB = {result['crops']} crops (1 global + {result['crops'] - 1} local);"
        f" greedy; max_new_tokens {args.max_new_tokens}; loading took {result['load']:.1f} s",
        "",
        "| request | prompt tokens | output tokens | time to first token (s) | decode (ms/token) | end-to-end (s) |",
        "|---|---|---|---|---|---|",
        _row("first question, on the picture", first),
        *(_row(f"follow-up {i}, on the encoded image", run) for i, run in enumerate(follow_ups, 1)),
        "",
        f"`encode_image` alone (vision encoder on every crop + image prefill): {result['encode']:.2f} s.",
        f"First-question TTFT / median follow-up TTFT: **{ratio:.0f}x** (measured in this one run).",
        "",
        "Times count from the call that makes the request. The first question's time to first token",
        "includes cropping, the vision encoder (one pass per crop) and the prefill of 730 prefix tokens;",
        "a follow-up on the encoded image copies the cached prefix and prefills only its question.",
        "Prompt tokens include the 730 prefix tokens (BOS + 729 image tokens).",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    result = measure(args)
    text = report(args, result, load_before)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
