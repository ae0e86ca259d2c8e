"""Measure how long users wait: time to first token and text, streaming against not, per model.

    >>> from vlm_notebook import bench
    >>> result = bench.run_benchmark(["shapes-smolvlm"], images=[picture], runs=3)
    >>> result.save("results.json")
    >>> bench.ttft_figure(result).savefig("ttft.png")

Definitions follow serving benchmarks: times are seconds from the request; time to first token
(TTFT) counts preprocessing, the vision encoder and the prefill; inter-token latency is the gap
between consecutive tokens; tokens are counted from token ids. Each case (image, prompt) gets
warm-up runs, then ``runs`` measured pairs: one streamed generation and one ``stream=False``
call timed end to end, on the same work. Records are plain dataclasses that round-trip through
JSON; figures are matplotlib ``Figure`` objects made without pyplot (safe with the Agg backend).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from . import cpu, registry
from .hub import checkpoint_directory
from .models.base import VLM
from .random_checkpoints import MARKER_KEY, random_checkpoint
from .stream import TextStream

#: ``--model random:NAME`` means the same-shape random-weight build of the published model NAME.
RANDOM_PREFIX = "random:"
_LIBRARIES = ("vlm-notebook", "torch", "transformers", "tokenizers", "pillow", "matplotlib")
_RUN_TIMEOUT = 600.0  # seconds one streamed generation may take before the benchmark gives up


@dataclass
class Machine:
    """Where the figures were measured: they mean little without it."""

    cores: int
    cpu_model: str
    load_average: list[float]  # 1, 5 and 15 minutes, when the benchmark started
    platform: str
    python: str
    torch_threads: int  # intra-op threads of the measuring thread
    libraries: dict[str, str]


@dataclass
class StreamedRun:
    """One streamed generation."""

    time_to_first_token: float | None
    time_to_first_text: float | None
    end_to_end: float
    tokens: int
    prompt_tokens: int
    image_tokens: int
    token_times: list[float]
    finish_reason: str | None
    text: str
    tiles: int | None = None
    image_cache: str | None = None  # "hit" or "miss" (families that keep an image's work)
    vision_seconds: float | None = None
    prefill_seconds: float | None = None

    @property
    def inter_token_latencies(self) -> list[float]:
        return [later - earlier for earlier, later in itertools.pairwise(self.token_times)]

    @property
    def decode_tokens_per_second(self) -> float | None:
        """Tokens after the first over the time from the first token to the last."""
        times = self.token_times
        span = times[-1] - times[0] if len(times) > 1 else 0.0
        return (len(times) - 1) / span if span > 0 else None

    @property
    def tokens_per_second(self) -> float | None:
        return self.tokens / self.end_to_end if self.tokens and self.end_to_end > 0 else None


@dataclass
class WholeRun:
    """One ``stream=False`` call: the user sees nothing until the whole answer is back."""

    end_to_end: float
    text: str


@dataclass
class Case:
    """The runs of one (image, prompt) pair; ``prompt`` None means the family's caption."""

    image: str
    prompt: str | None
    streamed: list[StreamedRun] = field(default_factory=list)
    whole: list[WholeRun] = field(default_factory=list)


@dataclass
class ModelResult:
    """All cases of one model."""

    model: str
    random_weights: bool
    warmup: int
    max_new_tokens: int
    load_seconds: float
    cases: list[Case] = field(default_factory=list)

    @property
    def label(self) -> str:
        """The model's name, marked "(random weights)" when its outputs are meaningless."""
        return f"{self.model} (random weights)" if self.random_weights else self.model

    @property
    def streamed(self) -> list[StreamedRun]:
        return [run for case in self.cases for run in case.streamed]

    @property
    def whole(self) -> list[WholeRun]:
        return [run for case in self.cases for run in case.whole]


@dataclass
class BenchResult:
    """A benchmark: the models' results, the machine and when; saves to and loads from JSON."""

    machine: Machine
    models: list[ModelResult]
    created: str
    command: str | None = None

    @property
    def random_weights(self) -> bool:
        return any(model.random_weights for model in self.models)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> BenchResult:
        return _result_from_dict(json.loads(text))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(self.to_json() + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> BenchResult:
        return cls.from_json(Path(path).read_text(encoding="utf-8"))


def _result_from_dict(data: dict[str, Any]) -> BenchResult:
    models = [_model_from_dict(model) for model in data["models"]]
    return BenchResult(Machine(**data["machine"]), models, data["created"], data.get("command"))


def _model_from_dict(data: dict[str, Any]) -> ModelResult:
    cases = [
        Case(
            case["image"],
            case["prompt"],
            [StreamedRun(**run) for run in case["streamed"]],
            [WholeRun(**run) for run in case["whole"]],
        )
        for case in data["cases"]
    ]
    return ModelResult(**{**data, "cases": cases})


# --- measuring ---------------------------------------------------------------------------------


def machine_info() -> Machine:
    """Cores, CPU model, load and library versions of this machine, now."""
    return Machine(
        cores=os.cpu_count() or 0,
        cpu_model=cpu.model_name(),
        load_average=[round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else [],
        platform=platform.platform(),
        python=platform.python_version(),
        torch_threads=torch.get_num_threads(),
        libraries={name: _version(name) for name in _LIBRARIES},
    )


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def model_for(name: str) -> VLM:
    """The (unloaded) model ``name`` means; ``random:NAME`` builds or reuses a random checkpoint."""
    if name.startswith(RANDOM_PREFIX):
        return registry.get_model(str(random_checkpoint(name.removeprefix(RANDOM_PREFIX))))
    return registry.get_model(name)


def is_random_weights(model: VLM) -> bool:
    """True when ``model``'s checkpoint carries the random-weights marker in its config.json."""
    entry = model.entry
    directory = checkpoint_directory(entry.source, model.revision, shipped=entry.shipped)
    try:
        config = json.loads((directory / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return bool(config.get(MARKER_KEY, False))


def measure_streamed(call: Callable[..., str | TextStream], timeout: float = _RUN_TIMEOUT) -> StreamedRun:
    """Run ``call(stream=True)`` to the end, consuming it as a reader would; its figures."""
    started = time.perf_counter()
    stream = call(stream=True)
    assert isinstance(stream, TextStream)
    with stream:
        text = stream.wait(timeout)
    stats = stream.stats
    end = stats.end_time if stats.end_time is not None else time.perf_counter() - started
    return StreamedRun(
        time_to_first_token=stats.time_to_first_token,
        time_to_first_text=stats.time_to_first_text,
        end_to_end=end,
        tokens=stats.tokens,
        prompt_tokens=stats.prompt_tokens,
        image_tokens=stats.image_tokens,
        token_times=list(stats.token_times),
        finish_reason=stats.finish_reason,
        text=text,
        tiles=stats.tiles,
        image_cache=stats.image_cache,
        vision_seconds=stats.vision_seconds,
        prefill_seconds=stats.prefill_seconds,
    )


def measure_whole(call: Callable[..., str | TextStream]) -> WholeRun:
    """Time ``call(stream=False)`` end to end: the wait before the user sees anything."""
    started = time.perf_counter()
    text = call(stream=False)
    elapsed = time.perf_counter() - started
    assert isinstance(text, str)
    return WholeRun(end_to_end=elapsed, text=text)


def measure_case(
    model: VLM, image: Any, prompt: str | None, *, runs: int, warmup: int, max_new_tokens: int
) -> Case:
    """Warm-up runs (not recorded), then ``runs`` pairs of a streamed and a whole generation.

    Every run is cold: the model's store of image work is emptied first, so each run pays for the
    vision encoder as a first question about a new picture does.
    """
    call = _request(model, image, prompt, max_new_tokens)
    for _ in range(warmup):
        measure_streamed(_cold(model, call))
        measure_whole(_cold(model, call))
    case = Case(image_label(image), prompt)
    for _ in range(runs):
        case.streamed.append(measure_streamed(_cold(model, call)))
        case.whole.append(measure_whole(_cold(model, call)))
    return case


def _cold(model: VLM, call: Callable[..., str | TextStream]) -> Callable[..., str | TextStream]:
    store = getattr(model, "image_cache", None)
    if store is not None:
        store.clear()
    return call


def _request(model: VLM, image: Any, prompt: str | None, max_new_tokens: int) -> Callable[..., str | TextStream]:
    def call(*, stream: bool) -> str | TextStream:
        if prompt is None:
            return model.caption_with(image, stream=stream, max_new_tokens=max_new_tokens)
        return model.query(image, prompt, stream=stream, max_new_tokens=max_new_tokens)

    return call


def image_label(image: Any) -> str:
    """A short name for an image in records: the file name of a path, else a description."""
    if isinstance(image, str | Path):
        return Path(image).name
    size = getattr(image, "size", None)
    return f"{type(image).__name__} {size[0]}x{size[1]}" if size else type(image).__name__


def measure_model(
    name: str,
    images: Sequence[Any],
    prompts: Sequence[str | None] = (None,),
    *,
    runs: int = 3,
    warmup: int = 1,
    max_new_tokens: int = 24,
) -> ModelResult:
    """Load ``name`` (timed) and measure every (image, prompt) pair."""
    if runs < 1 or warmup < 0:
        raise ValueError("runs must be at least 1 and warmup at least 0")
    model = model_for(name)
    started = time.perf_counter()
    model.load()
    result = ModelResult(name, is_random_weights(model), warmup, max_new_tokens, time.perf_counter() - started)
    for image in images:
        for prompt in prompts:
            case = measure_case(model, image, prompt, runs=runs, warmup=warmup, max_new_tokens=max_new_tokens)
            result.cases.append(case)
    return result


def run_benchmark(
    names: Sequence[str],
    images: Sequence[Any],
    prompts: Sequence[str | None] = (None,),
    *,
    runs: int = 3,
    warmup: int = 1,
    max_new_tokens: int = 24,
    command: str | None = None,
) -> BenchResult:
    """Measure each model in ``names`` on the same images and prompts; record the machine."""
    machine = machine_info()
    created = datetime.now(UTC).isoformat(timespec="seconds")
    models = [
        measure_model(name, images, prompts, runs=runs, warmup=warmup, max_new_tokens=max_new_tokens)
        for name in names
    ]
    return BenchResult(machine, models, created, command)


# --- summaries ---------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) with linear interpolation, as numpy's default; None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True)
class Spread:
    """Median and 90th percentile of one figure across runs."""

    p50: float | None
    p90: float | None

    @classmethod
    def of(cls, values: Sequence[float | None]) -> Spread:
        present = [value for value in values if value is not None]
        return cls(percentile(present, 50), percentile(present, 90))


def summary(model: ModelResult) -> dict[str, Spread]:
    """p50 and p90 across runs of each figure of ``model``."""
    streamed = model.streamed
    gaps = [run.inter_token_latencies for run in streamed]
    return {
        "time_to_first_token": Spread.of([run.time_to_first_token for run in streamed]),
        "time_to_first_text": Spread.of([run.time_to_first_text for run in streamed]),
        "inter_token_median": Spread.of([percentile(g, 50) for g in gaps]),
        "inter_token_p90": Spread.of([percentile(g, 90) for g in gaps]),
        "end_to_end_streamed": Spread.of([run.end_to_end for run in streamed]),
        "end_to_end_whole": Spread.of([run.end_to_end for run in model.whole]),
        "tokens_per_second": Spread.of([run.tokens_per_second for run in streamed]),
        "tokens": Spread.of([float(run.tokens) for run in streamed]),
        "prompt_tokens": Spread.of([float(run.prompt_tokens) for run in streamed]),
        "image_tokens": Spread.of([float(run.image_tokens) for run in streamed]),
        "vision_seconds": Spread.of([run.vision_seconds for run in streamed]),
        "prefill_seconds": Spread.of([run.prefill_seconds for run in streamed]),
        "decode_tokens_per_second": Spread.of([run.decode_tokens_per_second for run in streamed]),
    }


def comparison_rows(result: BenchResult) -> list[dict[str, Any]]:
    """Per model: the median wait without streaming, with streaming, and how many times shorter."""
    rows = []
    for model in result.models:
        figures = summary(model)
        whole = figures["end_to_end_whole"].p50
        first_text = figures["time_to_first_text"].p50
        rows.append({
            "model": model.label,
            "wait without streaming (s)": whole,
            "first token streaming (s)": figures["time_to_first_token"].p50,
            "first text streaming (s)": first_text,
            "improvement (x)": whole / first_text if whole and first_text else None,
        })
    return rows


def markdown_table(result: BenchResult) -> str:
    """``comparison_rows`` as a Markdown table (medians across runs)."""
    rows = comparison_rows(result)
    if not rows:
        return ""
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(row[key]) for key in header) + " |" for row in rows]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


# --- figures -----------------------------------------------------------------------------------


#: Figures are drawn at twice the screen's resolution so that text and points stay sharp.
FIGURE_SIZE = (7.0, 4.0)
TIMELINE_SIZE = (7.0, 3.5)
FIGURE_DPI = 144
#: Fewer runs than this get no box: a box of two or three values suggests a spread it cannot show.
_MIN_RUNS_FOR_A_BOX = 5


def _title(text: str, random_weights: bool) -> str:
    return f"{text} (random weights)" if random_weights else text


def _titled(axes: Any, text: str, random_weights: bool, detail: str) -> None:
    """The figure's title, with where and how often it was measured on a smaller second line."""
    axes.set_title(f"{_title(text, random_weights)}\n", fontsize=11)
    axes.set_title(detail, fontsize=8, color="dimgray", loc="left")


def machine_line(result: BenchResult) -> str:
    """"AMD EPYC, 2 cores · 5 runs per model after 1 warm-up": what a figure's numbers depend on."""
    machine = result.machine
    runs = sorted({len(model.streamed) for model in result.models})
    warmups = sorted({model.warmup for model in result.models})
    run_text = "/".join(map(str, runs)) or "0"
    return (
        f"{machine.cpu_model}, {machine.cores} cores · {run_text} runs per model "
        f"after {'/'.join(map(str, warmups)) or '0'} warm-up"
    )


def ttft_figure(result: BenchResult, *, figsize: tuple[float, float] = FIGURE_SIZE, dpi: int = FIGURE_DPI) -> Figure:
    """Time to first token per model: every run as a point, the median as a bar across them, and a
    box of the middle half once there are enough runs for one to mean something."""
    figure = Figure(figsize=figsize, dpi=dpi, layout="constrained")
    axes = figure.add_subplot()
    samples = [[r.time_to_first_token for r in m.streamed if r.time_to_first_token is not None] for m in result.models]
    positions = list(range(1, len(samples) + 1))
    boxed = [(position, values) for position, values in zip(positions, samples, strict=True)
             if len(values) >= _MIN_RUNS_FOR_A_BOX]
    if boxed:
        axes.boxplot([values for _, values in boxed], positions=[position for position, _ in boxed], widths=0.5,
                     showfliers=False, medianprops={"color": "black"})
    for position, values in zip(positions, samples, strict=True):
        offsets = [position + 0.15 * ((i % 5) - 2) / 2 for i in range(len(values))]
        axes.scatter(offsets, values, s=18, alpha=0.75, zorder=3)
        median = percentile(values, 50)
        if median is not None:
            axes.hlines(median, position - 0.3, position + 0.3, color="black", linewidth=1.5, zorder=4)
    labels = [f"{m.label}\n{len(values)} runs" for m, values in zip(result.models, samples, strict=True)]
    axes.set_xticks(positions, labels)
    axes.set_ylabel("time to first token (s)")
    axes.set_ylim(bottom=0)
    axes.grid(axis="y", alpha=0.3)
    _titled(axes, "Time to first token: each run, median as a line", result.random_weights, machine_line(result))
    return figure


def wait_figure(result: BenchResult, *, figsize: tuple[float, float] = FIGURE_SIZE, dpi: int = FIGURE_DPI) -> Figure:
    """Median wait before anything appears: first text streaming beside the whole answer without,
    each bar labelled with its value and spanning the runs' 10th to 90th percentile."""
    figure = Figure(figsize=figsize, dpi=dpi, layout="constrained")
    axes = figure.add_subplot()
    positions = range(len(result.models))
    series: list[tuple[str, list[list[float | None]], float]] = [
        ("streaming: first text", [[r.time_to_first_text for r in m.streamed] for m in result.models], -0.2),
        ("not streaming: whole answer", [[r.end_to_end for r in m.whole] for m in result.models], 0.2),
    ]
    for label, per_model, shift in series:
        present = [[value for value in values if value is not None] for values in per_model]
        medians = [percentile(values, 50) or 0.0 for values in present]
        spans = [_span(values, median) for values, median in zip(present, medians, strict=True)]
        bars = axes.bar([p + shift for p in positions], medians, width=0.4, label=label,
                        yerr=list(zip(*spans, strict=True)) if spans else None, capsize=3)
        axes.bar_label(bars, labels=[f"{value:.2f} s" for value in medians], label_type="center", fontsize=8,
                       color="white", fontweight="bold")
    axes.set_xticks(list(positions), [m.label for m in result.models])
    axes.set_xlim(-0.7, len(result.models) - 0.3)
    axes.set_ylabel("median wait (s); whiskers: 10th-90th percentile", fontsize=9)
    figure.legend(loc="outside lower center", ncols=2, frameon=False)
    _titled(axes, "What the user waits for", result.random_weights, machine_line(result))
    return figure


def _span(values: list[float], median: float) -> tuple[float, float]:
    """How far the 10th and 90th percentiles lie below and above the median (an error bar)."""
    low, high = percentile(values, 10), percentile(values, 90)
    return (median - low if low is not None else 0.0, high - median if high is not None else 0.0)


def timeline_figure(
    run: StreamedRun, *, label: str = "", random_weights: bool = False,
    figsize: tuple[float, float] = TIMELINE_SIZE, dpi: int = FIGURE_DPI,
) -> Figure:
    """Tokens generated over time in one streamed run, with the first token and first text marked."""
    figure = Figure(figsize=figsize, dpi=dpi, layout="constrained")
    axes = figure.add_subplot()
    counts = list(range(1, len(run.token_times) + 1))
    axes.step([0.0, *run.token_times], [0, *counts], where="post", label="tokens")
    if run.time_to_first_token is not None:
        axes.axvline(run.time_to_first_token, linestyle="--", color="gray", label="first token")
    if run.time_to_first_text is not None:
        axes.axvline(run.time_to_first_text, linestyle=":", color="black", label="first text")
    axes.set_xlabel("seconds since the request")
    axes.set_ylabel("tokens generated")
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(alpha=0.3)
    figure.legend(loc="outside right upper", frameon=False)
    _titled(axes, f"Token timeline: {label}" if label else "Token timeline", random_weights, "one streamed run")
    return figure
