"""The command line: ``python -m vlm_notebook caption|query|demo|models``.

Answers stream to stdout; figures (time to first token, tokens/s) go to stderr.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import TextIO

from . import registry
from .errors import VLMError
from .models.base import VLM
from .stream import TextStream

ASSETS = Path(__file__).parent / "assets"
DEMO_MODEL = "shapes-smolvlm"
DEMO_PICTURE = ASSETS / "red-circle-on-white.png"
DEMO_QUESTIONS = ("What colour is the shape?", "What colour is the shape? Answer in Japanese.")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        result: int = args.run(args)
        return result
    except VLMError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m vlm_notebook", description=__doc__)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    caption = commands.add_parser("caption", help="describe an image")
    caption.add_argument("image", help="path of the image file")
    caption.add_argument("--prompt", help="what to ask for (default: the family's caption prompt)")
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
    return parser


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="smolvlm-256m", help="model name, Hub id or checkpoint directory")
    parser.add_argument("--no-stream", action="store_true", help="print the whole answer at the end")
    parser.add_argument("--max-new-tokens", type=int, default=256)


def _run_caption(args: argparse.Namespace) -> int:
    model = _load(args.model)
    options = {"prompt": args.prompt} if args.prompt is not None else {}
    _answer(partial(model.caption_with, args.image, options=options, max_new_tokens=args.max_new_tokens), args)
    return 0


def _run_query(args: argparse.Namespace) -> int:
    model = _load(args.model)
    question = " ".join(args.question)
    _answer(partial(model.query, args.image, question, max_new_tokens=args.max_new_tokens), args)
    return 0


def _load(name: str) -> VLM:
    model = registry.get_model(name)
    print(f"loading {name} ...", file=sys.stderr, flush=True)
    return model.load()


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
    for entry in registry.known_models():
        where = "shipped, offline" if entry.shipped else entry.source
        print(f"{entry.name:16} {entry.family:8} {where}")
    return 0
