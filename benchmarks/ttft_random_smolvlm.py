"""Time to first token of a same-shape, random-weight SmolVLM-256M on this machine.

    python benchmarks/ttft_random_smolvlm.py [--runs N] [--out FILE]

Builds (once, under ~/.cache/vlm-notebook/random/) a random-weight checkpoint with the shape
and processor settings of HuggingFaceTB/SmolVLM-256M-Instruct, loads it with ``SmolVLM(dir)``
and streams a caption of a synthetic 640x480 picture, for the model-card defaults (image
splitting on: 13 tiles) and with splitting off (1 tile). Each setting gets warm-up runs, then
``--runs`` measured runs; the table gives the median and the min-max. Random weights: the
text is meaningless, only the times count. Nothing here asserts on a time.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import resource
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
import transformers
from PIL import Image

from vlm_notebook import cpu
from vlm_notebook.models import SmolVLM
from vlm_notebook.random_checkpoints import default_cache_dir, published_shape, random_checkpoint

NAME = "smolvlm-256m"
PROMPT = SmolVLM.default_prompt
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "ttft_random_smolvlm.md"


@dataclass(frozen=True)
class Setting:
    label: str
    image_splitting: bool


SETTINGS = (
    Setting("model-card defaults (splitting on)", True),
    Setting("splitting off", False),
)


@dataclass(frozen=True)
class Run:
    """One streamed generation; times in seconds from the request."""

    ttft: float
    first_text: float | None
    decode: float | None  # median inter-token latency
    end_to_end: float
    tokens: int
    prompt_tokens: int
    image_tokens: int
    finish_reason: str | None


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=3, help="measured runs per setting (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="warm-up runs per setting (default 1)")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="tokens to generate (default 16)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"markdown file (default {DEFAULT_OUT})")
    parser.add_argument("--cache-dir", type=Path, default=None, help=f"checkpoints (default {default_cache_dir()})")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.warmup < 0 or args.max_new_tokens < 2 or (args.threads or 1) < 1:
        parser.error("need --runs >= 1, --warmup >= 0, --max-new-tokens >= 2 and --threads >= 1")
    return args


def synthetic_picture(width: int = 640, height: int = 480) -> Image.Image:
    """A deterministic RGB picture: colour gradients with a little noise (content does not matter)."""
    x = np.linspace(0.0, 1.0, width)[None, :]
    y = np.linspace(0.0, 1.0, height)[:, None]
    noise = np.random.default_rng(0).uniform(-0.05, 0.05, (height, width, 3))
    planes = np.stack([x + 0 * y, y + 0 * x, 1.0 - (x + y) / 2], axis=-1) + noise
    return Image.fromarray((np.clip(planes, 0.0, 1.0) * 255).astype(np.uint8), "RGB")


def measure_once(model: SmolVLM, picture: Image.Image, max_new_tokens: int) -> Run:
    stream = model.caption(picture, PROMPT, stream=True, max_new_tokens=max_new_tokens)
    for _ in stream:
        pass
    stats = stream.stats
    if stats.time_to_first_token is None or stats.end_time is None:
        raise RuntimeError(f"the generation produced no token (finish reason {stats.finish_reason})")
    return Run(
        ttft=stats.time_to_first_token,
        first_text=stats.time_to_first_text,
        decode=stats.median_inter_token_latency,
        end_to_end=stats.end_time,
        tokens=stats.tokens,
        prompt_tokens=stats.prompt_tokens,
        image_tokens=stats.image_tokens,
        finish_reason=stats.finish_reason,
    )


def measure(setting: Setting, args: argparse.Namespace, picture: Image.Image) -> tuple[list[Run], str]:
    """Warm-up and measured runs of one setting; also the model's attention implementation."""
    directory = random_checkpoint(NAME, image_splitting=setting.image_splitting, cache_dir=args.cache_dir)
    log(f"{setting.label}: loading {directory}")
    model = SmolVLM(str(directory))
    model.load()
    attention = str(getattr(model.model.config, "_attn_implementation", "unknown"))
    for index in range(args.warmup):
        log(f"  warm-up {index + 1}: {describe(measure_once(model, picture, args.max_new_tokens))}")
    runs = []
    for index in range(args.runs):
        runs.append(measure_once(model, picture, args.max_new_tokens))
        log(f"  run {index + 1}: {describe(runs[-1])}")
    del model
    gc.collect()
    return runs, attention


def describe(run: Run) -> str:
    decode = f"{run.decode * 1000:.0f} ms/token" if run.decode is not None else "-"
    return f"TTFT {run.ttft:.2f} s, {run.image_tokens} image tokens, {decode}, end-to-end {run.end_to_end:.2f} s"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def spread(values: Sequence[float | None], scale: float = 1.0, digits: int = 2) -> str:
    """'median (min-max)' of the values present; '-' when there are none."""
    present = [v * scale for v in values if v is not None]
    if not present:
        return "-"
    median = f"{statistics.median(present):.{digits}f}"
    if len(present) == 1:
        return median
    return f"{median} ({min(present):.{digits}f}–{max(present):.{digits}f})"


def count(values: Sequence[int]) -> str:
    """One number when all runs agree, else the median and the range."""
    if min(values) == max(values):
        return str(values[0])
    return f"{statistics.median(values):g} ({min(values)}–{max(values)})"


def summary_row(setting: Setting, runs: Sequence[Run], tile_tokens: int) -> str:
    def field(get: Callable[[Run], float | None], scale: float = 1.0, digits: int = 2) -> str:
        return spread([get(run) for run in runs], scale, digits)

    cells = [
        setting.label,
        count([run.image_tokens // tile_tokens for run in runs]),
        count([run.image_tokens for run in runs]),
        count([run.prompt_tokens for run in runs]),
        count([run.tokens for run in runs]),
        field(lambda run: run.ttft),
        field(lambda run: run.first_text),
        field(lambda run: run.decode, 1000.0, 0),
        field(lambda run: run.end_to_end),
    ]
    return "| " + " | ".join(cells) + " |"


def run_rows(setting: Setting, runs: Sequence[Run]) -> list[str]:
    rows = []
    for index, run in enumerate(runs, 1):
        first_text = f"{run.first_text:.2f}" if run.first_text is not None else "-"
        decode = f"{run.decode * 1000:.0f}" if run.decode is not None else "-"
        cells = [setting.label, str(index), f"{run.ttft:.2f}", first_text, decode, f"{run.end_to_end:.2f}",
                 str(run.tokens), run.finish_reason or "-"]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def machine_lines(attention: str) -> list[str]:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = torch.get_num_threads()
    return [
        f"- machine: {cores} cores usable ({os.cpu_count()} online), CPU `{cpu.model_name()}`, "
        f"flags: {', '.join(cpu.matrix_flags()) or 'no AVX2'}",
        f"- software: Python {platform.python_version()}, torch {torch.__version__} "
        f"({threads} thread{'' if threads == 1 else 's'}), transformers {transformers.__version__}; "
        f"fp32, attention `{attention}`",
    ]


def report(
    args: argparse.Namespace, results: Sequence[tuple[Setting, list[Run]]], attention: str, load: str, others: str
) -> str:
    shape = published_shape(NAME)
    command = shlex.join(["python", "benchmarks/ttft_random_smolvlm.py", *sys.argv[1:]])
    header = [
        "# Time to first token: random-weight SmolVLM-256M (same shape), CPU",
        "",
        "> **Random weights: the text is meaningless, only the times count.** The checkpoint has the",
        f"> architecture, sizes and processor settings of {shape.hub_id} (built by",
        "> `vlm_notebook.random_checkpoints`), random weights and a stand-in byte-level tokenizer.",
        "",
        f"- command: `{command}`",
        f"- date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        *machine_lines(attention),
        f"- load average (1, 5, 15 min) at the start: {load}; at the end: {load_average()}",
        f"- other processes kept {others} cores busy on average while this script ran (from /proc/stat)",
        *contention_note(others),
        f"- picture: synthetic 640x480 RGB; prompt {PROMPT!r}; greedy; max_new_tokens {args.max_new_tokens}",
        f"- {args.warmup} warm-up and {args.runs} measured runs per setting, through `SmolVLM(dir).caption"
        "(..., stream=True)`; cells are median (min–max) over the measured runs",
        "",
    ]
    table = [
        "| setting | tiles | image tokens | prompt tokens | output tokens | time to first token (s) "
        "| time to first text (s) | decode (ms/token) | end-to-end (s) |",
        "|---|---|---|---|---|---|---|---|---|",
        *(summary_row(setting, runs, shape.image_seq_len) for setting, runs in results),
    ]
    per_run = [
        "",
        "Per run:",
        "",
        "| setting | run | first token (s) | first text (s) | decode (ms/token) | end-to-end (s) | tokens | finish |",
        "|---|---|---|---|---|---|---|---|",
        *(row for setting, runs in results for row in run_rows(setting, runs)),
    ]
    notes = [
        "",
        "Times count from the call that makes the request (before preprocessing), so the time to first",
        "token includes image preprocessing, the vision encoder (one pass per tile) and the prefill.",
        "Decode is the median gap between consecutive tokens; end-to-end is until the stream ends.",
        "Tiles = image tokens / 64. Prompt tokens include the image tokens. The machine may be shared,",
        "so the numbers are noisy: compare the medians, and the spread, not single runs.",
    ]
    return "\n".join(header + table + per_run + notes) + "\n"


@dataclass(frozen=True)
class CpuSample:
    """CPU seconds used by every process on the machine and by this one, at a wall-clock time."""

    wall: float
    machine: float | None
    own: float


def cpu_sample() -> CpuSample:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return CpuSample(time.perf_counter(), machine_cpu_seconds(), usage.ru_utime + usage.ru_stime)


def machine_cpu_seconds() -> float | None:
    """Busy CPU seconds of all processes since boot, from /proc/stat (None elsewhere)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def others_cores(start: CpuSample, end: CpuSample) -> str:
    """How many cores other processes kept busy on average between two samples."""
    if start.machine is None or end.machine is None or end.wall <= start.wall:
        return "unknown"
    others = (end.machine - start.machine) - (end.own - start.own)
    return f"{max(others, 0.0) / (end.wall - start.wall):.2f}"


def contention_note(others: str) -> list[str]:
    """A warning when other processes competed for the cores torch's threads expect to have."""
    try:
        busy = float(others)
    except ValueError:
        return []
    if busy < 0.25:
        return []
    return [
        "- **the machine was not idle**: when other processes take cores that torch's threads expect to",
        "  have, every parallel operation waits for a descheduled thread, and many small operations",
        "  (decoding) slow down far more than a few large ones (the vision encoder); rerun on an idle",
        "  machine, or compare with `--threads 1`",
    ]


def load_average() -> str:
    return ", ".join(f"{value:.2f}" for value in os.getloadavg())


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    picture = synthetic_picture()
    load = load_average()
    start = cpu_sample()
    results = []
    attention = "unknown"
    for setting in SETTINGS:
        runs, attention = measure(setting, args, picture)
        results.append((setting, runs))
    text = report(args, results, attention, load, others_cores(start, cpu_sample()))
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    log(f"written to {args.out}")


if __name__ == "__main__":
    main()
