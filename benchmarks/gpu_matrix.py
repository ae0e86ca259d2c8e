"""Each family at its published shape (random weights) on whatever accelerator is present.

Per family: load time, time to first token for a new picture (cold, with the vision encoder's and
the prefill's shares of it) and for a follow-up question on the same picture, decode tokens/s and
peak device memory, in the default settings (``device="auto"``, ``dtype="auto"``, the CPU-default
picture sizes). On CUDA, every family's decode step replays a CUDA graph
(``vlm_notebook.models.graphs``: SmolVLM's and Qwen2-VL's ``llama_step.GraphedLlamaStep``,
Moondream's ``moondream.inference.GraphedStep``); each is measured again with them off (operator by
operator), to show what they save. torch.compile is not used.

    python benchmarks/gpu_matrix.py                        # all three families, results/gpu_matrix.md
    python benchmarks/gpu_matrix.py --family smolvlm --runs 1 --device cpu    # a quick check anywhere

The random checkpoints are built once (SmolVLM-256M, Qwen2-VL-2B, Moondream 2: about 1, 9 and 4 GB)
under the cache directory of the other benchmarks. Targets of issue #17 for an H100/H200-class GPU
are printed beside what was reached.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmarks build the checkpoints

from ttft_random_moondream import build_random_checkpoint as moondream_checkpoint
from ttft_random_moondream import checkpoint_dir as moondream_dir
from ttft_random_qwen2vl import random_checkpoint as qwen2vl_checkpoint

from vlm_notebook import get_model
from vlm_notebook.models import VLM, graphs
from vlm_notebook.random_checkpoints import random_checkpoint

RESULTS = Path(__file__).resolve().parent / "results"
QUESTIONS = ("What is in this picture?", "What colour is the background?")
BUILDERS: dict[str, Callable[[], Path]] = {
    "smolvlm": lambda: random_checkpoint("smolvlm-256m"),
    "qwen2vl": lambda: qwen2vl_checkpoint(None),
    "moondream": lambda: moondream_checkpoint(moondream_dir(None)),
}
#: The families whose decode steps replay CUDA graphs on CUDA (measured with them off too).
GRAPHED = ("smolvlm", "qwen2vl", "moondream")
#: Issue #17's targets on an H100/H200-class GPU: cold TTFT, follow-up TTFT (s), decode tokens/s.
TARGETS = {"smolvlm": (0.050, 0.020, 300.0), "qwen2vl": (0.060, None, 150.0), "moondream": (0.060, None, 150.0)}


@dataclass
class Row:
    family: str
    setting: str
    device: str
    dtype: str
    load_seconds: float
    cold_ttft: float
    cold_vision: float  # the cold answer's vision encoder time (s)
    cold_prefill: float  # and its prefill time (s): the rest of the cold TTFT is neither
    follow_up_ttft: float
    decode_tokens_per_second: float
    peak_memory_gib: float | None


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", action="append", choices=list(BUILDERS), help="repeatable (default: all)")
    parser.add_argument("--device", default="auto", help="as device= (default auto)")
    parser.add_argument("--runs", type=int, default=5, help="measured runs per figure (median reported)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--out", type=Path, default=RESULTS / "gpu_matrix", help="writes OUT.md and OUT.json")
    parser.add_argument(
        "--profile", action="store_true",
        help="also write OUT_FAMILY_profile.txt: torch.profiler's tables of a cold answer and its follow-up",
    )
    return parser.parse_args()


def picture(seed: int) -> Image.Image:
    """A 640x480 picture of noise: every run a new one, so a cold run finds nothing stored."""
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (480, 640, 3), dtype=torch.uint8, generator=generator)
    return Image.fromarray(pixels.numpy())


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


@dataclass
class Answer:
    """Figures of one streamed answer (seconds; tokens/s)."""

    ttft: float
    vision: float
    prefill: float
    decode_rate: float


def ask(model: VLM, image: Image.Image, question: str, max_new_tokens: int) -> Answer:
    """The figures of one streamed answer."""
    stream = model.query(image, question, stream=True, max_new_tokens=max_new_tokens)
    for _ in stream:
        pass
    synchronize()
    stats = stream.stats
    return Answer(
        stats.time_to_first_token or 0.0, stats.vision_seconds or 0.0, stats.prefill_seconds or 0.0,
        stats.decode_tokens_per_second or 0.0,
    )


def measure(family: str, args: argparse.Namespace) -> list[Row]:
    """The family's rows, on one loaded model: the default settings, then (for a ``GRAPHED`` family
    on CUDA) with CUDA graphs off."""
    directory = BUILDERS[family]()
    started = time.perf_counter()
    model = get_model(str(directory), device=args.device).load()
    synchronize()
    load_seconds = time.perf_counter() - started
    rows = [timed(model, family, "default", load_seconds, args)]
    if args.profile:
        try:
            profile(model, args, args.out.with_name(f"{args.out.name}_{family}_profile.txt"))
        except Exception as error:  # a profiler that fails must not cost the measured figures
            print(f"{family}: no profile ({error!r})", file=sys.stderr)
    if family in GRAPHED and torch.cuda.is_available():
        graphs.CUDA_GRAPHS = False  # read as each answer makes its step
        try:
            rows.append(timed(model, family, "graphs off", load_seconds, args))
        finally:
            graphs.CUDA_GRAPHS = True
    return rows


def timed(model: VLM, family: str, setting: str, load_seconds: float, args: argparse.Namespace) -> Row:
    """One warm-up, then ``args.runs`` new pictures, each asked a question and a follow-up."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()  # the peak from here on: the weights and this setting's work
    ask(model, picture(10_000), QUESTIONS[0], args.max_new_tokens)  # warm-up: allocation, kernels
    cold, follow = [], []
    for run in range(args.runs):
        image = picture(run)
        cold.append(ask(model, image, QUESTIONS[0], args.max_new_tokens))
        follow.append(ask(model, image, QUESTIONS[1], args.max_new_tokens))
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    return Row(
        family, setting, model.device or "?", model.dtype or "?", load_seconds,
        cold_ttft=statistics.median(answer.ttft for answer in cold),
        cold_vision=statistics.median(answer.vision for answer in cold),
        cold_prefill=statistics.median(answer.prefill for answer in cold),
        follow_up_ttft=statistics.median(answer.ttft for answer in follow),
        decode_tokens_per_second=statistics.median(answer.decode_rate for answer in cold),
        peak_memory_gib=peak,
    )


def profile(model: VLM, args: argparse.Namespace, path: Path) -> None:
    """Where the time of one cold answer (a new picture) and of its follow-up goes: operators by
    their time on the device and on the CPU, and the device's busy time against the answer's wall
    time (far below it where the CPU that launches the kernels is what the device waits on)."""
    image = picture(20_000)
    cold = profiled(model, image, QUESTIONS[0], args, "cold")
    path.write_text(cold + "\n" + profiled(model, image, QUESTIONS[1], args, "follow-up"))


def profiled(model: VLM, image: Image.Image, question: str, args: argparse.Namespace, kind: str) -> str:
    """torch.profiler's table of one answer, headed by its wall and device-busy times."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as profiler

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    try:
        every_thread = torch._C._profiler._ExperimentalConfig(profile_all_threads=True)  # the stream's thread too
    except TypeError:  # an older torch: the device's kernels are still recorded
        every_thread = None
    with profiler(activities=activities, experimental_config=every_thread) as recorded:
        started = time.perf_counter()
        ask(model, image, question, args.max_new_tokens)
        wall = time.perf_counter() - started
    events = recorded.key_averages()
    busy = sum(getattr(event, "self_device_time_total", 0.0) for event in events) / 1e6
    sort = "self_device_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    summary = f"{kind} answer: wall {wall * 1000:.1f} ms, device busy {busy * 1000:.1f} ms, {len(events)} operators\n"
    table: str = events.table(sort_by=sort, row_limit=30)
    return summary + table + "\n"


def machine() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (CUDA {torch.version.cuda}), torch {torch.__version__}"
    return f"{platform.processor() or platform.machine()} CPU, torch {torch.__version__}"


def report(rows: list[Row], args: argparse.Namespace) -> str:
    lines = [
        "# Each family at its published shape, random weights, default settings",
        "",
        f"Machine: {machine()}. Medians of {args.runs} runs after one warm-up; 640x480 noise pictures, "
        f"{args.max_new_tokens} new tokens; torch.compile not used; *graphs off*: decode steps operator by "
        "operator instead of replayed CUDA graphs.",
        "",
        "| family | setting | device | dtype | load (s) | cold TTFT (ms) | of it vision / prefill (ms) |"
        " follow-up TTFT (ms) | decode tok/s | peak GiB | target cold / follow-up / tok/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        cold, follow, rate = TARGETS[row.family]
        follow_text = f"{follow * 1000:.0f}" if follow else "-"
        target = f"{cold * 1000:.0f} / {follow_text} / {rate:.0f}"
        peak = f"{row.peak_memory_gib:.2f}" if row.peak_memory_gib is not None else "-"
        lines.append(
            f"| {row.family} | {row.setting} | {row.device} | {row.dtype} | {row.load_seconds:.1f} | "
            f"{row.cold_ttft * 1000:.0f} | {row.cold_vision * 1000:.0f} / {row.cold_prefill * 1000:.0f} | "
            f"{row.follow_up_ttft * 1000:.0f} | {row.decode_tokens_per_second:.0f} | "
            f"{peak} | {target} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    args = parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for family in args.family or list(BUILDERS):
        print(f"{family} ...", file=sys.stderr, flush=True)
        rows.extend(measure(family, args))
    text = report(rows, args)
    print(text)
    args.out.with_suffix(".md").write_text(text)
    settings = {name: str(value) for name, value in vars(args).items()}
    record = {"machine": machine(), "args": settings, "rows": [asdict(row) for row in rows]}
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
