"""The command line: ``python -m vlm_notebook caption|query|demo|models|bench|batch``.

Answers stream to stdout; figures (time to first token, tokens/s) go to stderr. Arguments and
pictures are checked before anything heavy is imported or loaded, so a mistake is reported at once.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from . import caption_options, registry
from .errors import VLMError
from .images import load_image
from .models.base import VLM
from .options import runtime_flags
from .stream import TextStream

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .bench import BenchResult

ASSETS = Path(__file__).parent / "assets"
DEMO_MODEL = "shapes-smolvlm"
DEMO_PICTURE = ASSETS / "red-circle-on-white.png"
DEMO_QUESTIONS = ("What colour is the shape?", "What colour is the shape? Answer in Japanese.")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]  # recorded with benchmark results
    try:
        result: int = args.run(args)
        return result
    except VLMError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly, as other tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 141


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m vlm_notebook", description=__doc__)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    caption = commands.add_parser("caption", help="describe an image")
    caption.add_argument("image", help="path of the image file")
    _add_caption_options(caption)
    _add_common(caption)
    caption.set_defaults(run=_run_caption)
    query = commands.add_parser("query", help="answer a question about an image")
    query.add_argument("image", help="path of the image file")
    query.add_argument("question", nargs="+", help="the question")
    _add_common(query)
    query.set_defaults(run=_run_query)
    demo = commands.add_parser("demo", help="a first test drive on the bundled checkpoint and picture")
    demo.set_defaults(run=_run_demo)
    models = commands.add_parser("models", help="list the known model names")
    models.set_defaults(run=_run_models)
    _add_bench(commands)
    _add_batch(commands)
    return parser


def _add_batch(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    batch = commands.add_parser(
        "batch", help="caption many pictures into a JSONL file; run again to resume",
        description="One JSON line per picture as each caption completes; pictures already in --out are skipped.",
    )
    batch.add_argument("images", nargs="+", help="picture files and folders")
    batch.add_argument("--out", type=Path, required=True, help="the JSONL file of results (appended to)")
    batch.add_argument("--concurrency", type=int, help="requests in flight for a remote model (default 4)")
    _add_caption_options(batch)
    _add_model_options(batch, "model name, directory, or remote:<model>@<base_url>")
    batch.add_argument("--max-new-tokens", type=int, default=256, help="the longest caption, in tokens (default 256)")
    batch.set_defaults(run=_run_batch)


def _run_batch(args: argparse.Namespace) -> int:
    from .batch import caption_batch, output_path

    out = output_path(args.out)  # a folder or a missing folder is refused before the model loads
    report = caption_batch(
        _load(args), args.images, out, concurrency=args.concurrency, options=_caption_options(args),
        max_new_tokens=args.max_new_tokens,
    )
    for image, reason in report.failed.items():
        print(f"failed: {image}: {reason}", file=sys.stderr)
    print(report.summary(), file=sys.stderr)
    return 1 if report.failed else 0


def _add_bench(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bench = commands.add_parser(
        "bench", help="time to first token, streaming against not, per model",
        description="Warm-up runs, then --runs measured pairs (streamed, not streamed) per image and prompt.",
    )
    bench.add_argument(
        "--model", action="append", required=True,
        help="model name, Hub id, directory, or random:smolvlm-256m (random weights, same shape); repeatable",
    )
    bench.add_argument("--image", action="append", help=f"picture (repeatable; default {DEMO_PICTURE.name})")
    bench.add_argument("--prompt", action="append", help="question (repeatable; default: the caption prompt)")
    bench.add_argument("--runs", type=int, default=3, help="measured runs per image and prompt")
    bench.add_argument("--warmup", type=int, default=1, help="unrecorded runs first")
    bench.add_argument("--max-new-tokens", type=int, default=24)
    bench.add_argument("--out", type=Path, help="write the results as JSON here")
    bench.add_argument("--plot", type=Path, help="write the time-to-first-token figure (PNG) here")
    bench.add_argument("--wait-plot", type=Path, help="write the streaming-against-not figure here")
    bench.add_argument("--timeline-plot", type=Path, help="write the first model's first run's token timeline here")
    bench.set_defaults(run=_run_bench)


def _run_bench(args: argparse.Namespace) -> int:
    from . import bench  # matplotlib and the models only when benchmarking

    images = args.image or [str(DEMO_PICTURE)]
    prompts = args.prompt or [None]
    print(f"benchmarking {', '.join(args.model)}: {args.runs} runs after {args.warmup} warm-up", file=sys.stderr)
    result = bench.run_benchmark(
        args.model, images, prompts, runs=args.runs, warmup=args.warmup,
        max_new_tokens=args.max_new_tokens, command=shlex.join(["python", "-m", "vlm_notebook", *args.argv]),
    )
    print(bench.markdown_table(result))
    if args.out:
        print(f"results: {result.save(args.out)}", file=sys.stderr)
    _save_figures(result, args)
    return 0


def _save_figures(result: BenchResult, args: argparse.Namespace) -> None:
    from . import bench

    first = result.models[0]
    makers: list[tuple[Path | None, Callable[[], Figure]]] = [
        (args.plot, partial(bench.ttft_figure, result)),
        (args.wait_plot, partial(bench.wait_figure, result)),
        (args.timeline_plot, partial(
            bench.timeline_figure, first.streamed[0], label=first.model, random_weights=first.random_weights
        )),
    ]
    for path, make in makers:
        if path is not None:
            make().savefig(path)
            print(f"figure: {path}", file=sys.stderr)


def _add_common(parser: argparse.ArgumentParser) -> None:
    _add_model_options(parser, "model name, Hub id or checkpoint directory")
    parser.add_argument("--no-stream", action="store_true", help="print the whole answer at the end")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="the longest answer, in tokens (default 256)")


def _add_model_options(parser: argparse.ArgumentParser, model_help: str) -> None:
    parser.add_argument("--model", default="smolvlm-256m", help=f"{model_help} (default smolvlm-256m)")
    for name, settings in runtime_flags():
        parser.add_argument(name, **settings)


def _add_caption_options(parser: argparse.ArgumentParser) -> None:
    """A flag for every family's caption options; a family refuses those it does not have."""
    for option in caption_options.ALL:
        name, settings = caption_options.flag(option)
        parser.add_argument(name, **settings)


def _caption_options(args: argparse.Namespace) -> dict[str, str]:
    return {option.name: value for option in caption_options.ALL if (value := getattr(args, option.name)) is not None}


def _run_caption(args: argparse.Namespace) -> int:
    picture = load_image(args.image)  # a bad picture is reported before the model loads
    model = _load(args)
    call = partial(model.caption_with, picture, options=_caption_options(args), max_new_tokens=args.max_new_tokens)
    _answer(call, args)
    return 0


def _run_query(args: argparse.Namespace) -> int:
    picture = load_image(args.image)
    model = _load(args)
    question = " ".join(args.question)
    _answer(partial(model.query, picture, question, max_new_tokens=args.max_new_tokens), args)
    return 0


def _load(args: argparse.Namespace) -> VLM:
    model = registry.get_model(args.model, device=args.device, dtype=args.dtype)
    print(f"loading {args.model} ...", file=sys.stderr, flush=True)
    model.load()
    if model.device is not None:
        print(f"on {model.device} in {model.dtype}", file=sys.stderr)
    return model


def _answer(call: Callable[..., str | TextStream], args: argparse.Namespace) -> None:
    if args.no_stream:
        started = time.perf_counter()
        print(call(stream=False))
        print(f"whole answer after {time.perf_counter() - started:.2f} s", file=sys.stderr)
    else:
        print(_stream_to(sys.stdout, _as_stream(call(stream=True))), file=sys.stderr)


def _as_stream(result: str | TextStream) -> TextStream:
    assert isinstance(result, TextStream)
    return result


def _stream_to(out: TextIO, stream: TextStream) -> str:
    """Print chunks as they come; return the stats line."""
    with stream:
        for chunk in stream:
            out.write(chunk)
            out.flush()
    out.write("\n")
    return stream.stats.summary()


def _run_demo(args: argparse.Namespace) -> int:
    from .models import SmolVLM

    model = SmolVLM(DEMO_MODEL)
    print(f"vlm-notebook demo: {DEMO_MODEL}, a tiny SmolVLM trained on pictures of shapes, shipped offline.")
    print("It answers within milliseconds, so streaming's head start below is noise; on a real model the")
    print("first words come seconds before the whole answer (benchmarks/results/bench_random_smolvlm256m.md).")
    print(f"picture: {DEMO_PICTURE.name}\n")
    started = time.perf_counter()
    model.load()
    print(f"loaded in {time.perf_counter() - started:.2f} s\n")
    _side_by_side(model.default_prompt, partial(model.caption, DEMO_PICTURE))
    for question in DEMO_QUESTIONS:
        _side_by_side(question, partial(model.query, DEMO_PICTURE, question))
    return 0


def _side_by_side(prompt: str, call: Callable[..., str | TextStream]) -> None:
    """The same request streamed and not: when the first text appears against the whole answer."""
    print(f"> {prompt}")
    sys.stdout.write("  streaming:     ")
    stream = _as_stream(call(stream=True))
    summary = _stream_to(sys.stdout, stream)
    first = stream.stats.time_to_first_text or 0.0
    started = time.perf_counter()
    text = call(stream=False)
    whole = time.perf_counter() - started
    print(f"  not streaming: {text}")
    print(f"  first text after {first * 1000:.0f} ms streaming; whole answer after {whole * 1000:.0f} ms without")
    print(f"  ({summary})\n")


def _run_models(args: argparse.Namespace) -> int:
    entries = registry.known_models()
    name_width = max(len(entry.name) for entry in entries)
    family_width = max(len(entry.family) for entry in entries)
    for entry in entries:
        print(f"{entry.name:{name_width}}  {entry.family:{family_width}}  {entry.origin}")
    return 0
