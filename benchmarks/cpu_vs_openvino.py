"""SmolVLM-256M on this CPU: vlm-notebook against OpenVINO, in alternating rounds.

    python benchmarks/cpu_vs_openvino.py [--rounds N] [--card-rounds N] [--tokens N] [--out FILE]

The peer is what a user who wants CPU speed picks: OpenVINO through optimum-intel, pinned in
``openvino_peer.txt`` and installed (``--no-deps``) in its own virtual environment under
``~/.cache/vlm-notebook/openvino-peer`` on first use. Both sides run the same random-weight
checkpoint of SmolVLM-256M's published shape (``vlm_notebook.random_checkpoints``), exported by
``optimum-cli`` once in fp32 and once with int8 weights, the same 640x480 picture and the same
questions through the checkpoint's chat template; greedy, a fixed number of new tokens.

Every variant is a process of its own (its peak RSS is its own), loaded once and warmed up;
then the rounds go round the variants, each asked a question about a new picture (the picture's
work is done again: ours empties its image store) and a follow-up about the same picture (ours
reuses the picture's work; OpenVINO keeps nothing between requests). "one tile": the picture's
longest edge is cut to the vision encoder's 512 px (vlm-notebook's CPU default; the peer is
given ``do_image_splitting=False``); "card tiles": the model card's sizes, 13 tiles here.

Writes ``results/cpu_vs_openvino.md`` and ``.json``: medians, min-max, the machine, and the
issue's targets as ratios within this one run. Not part of ``make test``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# Only the standard library up here: this file is also the worker, in both environments.
HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
PICTURE = RESULTS / "red-circle-640x480.png"
PEER_REQUIREMENTS = HERE / "openvino_peer.txt"
QUESTIONS = ("What is in the picture?", "What colour is the shape?", "Is there any text?", "Where is it?")
EXPORT_MARK = "openvino_language_model.xml"


@dataclass(frozen=True)
class Variant:
    """One process: which side, how it is set up, and the picture sizes it is asked with."""

    label: str
    side: str  # "ours" or "openvino"
    settings: dict[str, Any]
    tiles: str = "one"  # "one" or "card"


VARIANTS = (
    Variant("ours, defaults", "ours", {}),
    Variant("ours, int8=True", "ours", {"int8": True}),
    Variant("ours, fp32", "ours", {"dtype": "float32"}),
    Variant("OpenVINO, defaults", "openvino", {"export": "fp32"}),
    Variant("OpenVINO, int8 export", "openvino", {"export": "int8"}),
    Variant("OpenVINO, strict fp32", "openvino", {"export": "fp32", "ov_config": {"INFERENCE_PRECISION_HINT": "f32"}}),
    Variant("ours, defaults, card tiles", "ours", {"defaults": "card"}, tiles="card"),
    Variant("OpenVINO, defaults, card tiles", "openvino", {"export": "fp32"}, tiles="card"),
)


@dataclass
class Answer:
    """One request, as the worker measured it; times in seconds from the request."""

    ttft: float
    token_times: list[float]
    image_tokens: int
    peak_rss_mb: float

    @property
    def decode_rate(self) -> float | None:
        """Tokens after the first over the time from the first token to the last."""
        span = self.token_times[-1] - self.token_times[0] if len(self.token_times) > 1 else 0.0
        return (len(self.token_times) - 1) / span if span > 0 else None


@dataclass
class Measured:
    variant: Variant
    ready: dict[str, Any]
    new_picture: list[Answer] = field(default_factory=list)
    follow_up: list[Answer] = field(default_factory=list)


# ---------------------------------------------------------------- the workers


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class OursWorker:
    """vlm-notebook's SmolVLM with the settings given (CPU defaults when none)."""

    def __init__(self, checkpoint: str, settings: dict[str, Any]):
        from vlm_notebook.models import SmolVLM

        self.model = SmolVLM(checkpoint, **settings)
        self.model.load()
        self.describe = {"dtype": self.model.dtype, "device": self.model.device}

    def answer(self, picture: Any, question: str, new_picture: bool, tiles: str, tokens: int) -> Answer:
        if new_picture:
            self.model.image_cache.clear()
        stream = self.model.query(picture, question, stream=True, max_new_tokens=tokens)
        stream.wait(900)
        stats = stream.stats
        assert stats.time_to_first_token is not None, stats
        return Answer(stats.time_to_first_token, list(stats.token_times), stats.image_tokens, peak_rss_mb())


class OpenVINOWorker:
    """optimum-intel's ``OVModelForVisualCausalLM`` on an exported directory, as its docs use it;
    the processor comes from the checkpoint (the export leaves out the tokenizer's files)."""

    def __init__(self, directory: str, settings: dict[str, Any]):
        import openvino
        from optimum.intel import OVModelForVisualCausalLM

        ov_config = settings.get("ov_config") or {}
        self.model = OVModelForVisualCausalLM.from_pretrained(directory, ov_config=ov_config)
        self.processor = peer_processor(Path(settings["processor"]))
        self.image_id = self.processor.tokenizer.convert_tokens_to_ids("<image>")
        precision = self.model.language_model.request.get_compiled_model().get_property("INFERENCE_PRECISION_HINT")
        self.describe = {"openvino": openvino.__version__.split("-")[0], "inference precision": precision.to_string()}

    def answer(self, picture: Any, question: str, new_picture: bool, tiles: str, tokens: int) -> Answer:
        from transformers.generation.streamers import BaseStreamer

        started = time.perf_counter()
        times: list[float] = []

        class Timer(BaseStreamer):  # type: ignore[misc]
            prompt_seen = False

            def put(self, value: Any) -> None:
                if self.prompt_seen:
                    times.extend([time.perf_counter() - started] * value.numel())
                self.prompt_seen = True

            def end(self) -> None:
                pass

        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True)
        # transformers 4.57's processor ignores do_image_splitting as a call argument
        self.processor.image_processor.do_image_splitting = tiles == "card"
        inputs = self.processor(text=text, images=[picture], return_tensors="pt")
        self.model.generate(**inputs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, streamer=Timer())
        image_tokens = int((inputs["input_ids"] == self.image_id).sum())
        return Answer(times[0], times, image_tokens, peak_rss_mb())


def peer_processor(checkpoint: Path) -> Any:
    """The checkpoint's processor for the peer's transformers 4.57, which cannot read the
    tokenizer files that transformers 5 writes: built from the same parts and settings."""
    from transformers import Idefics3ImageProcessor, Idefics3Processor, PreTrainedTokenizerFast

    names = json.loads((checkpoint / "tokenizer_config.json").read_text())
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(checkpoint / "tokenizer.json"),
        **{key: names[key] for key in ("bos_token", "eos_token", "pad_token", "unk_token")},
        additional_special_tokens=names["extra_special_tokens"],
    )
    settings = json.loads((checkpoint / "processor_config.json").read_text())
    image_settings = {key: value for key, value in settings["image_processor"].items() if key != "image_processor_type"}
    return Idefics3Processor(
        Idefics3ImageProcessor(**image_settings), tokenizer,
        image_seq_len=settings["image_seq_len"], chat_template=(checkpoint / "chat_template.jinja").read_text(),
    )


def serve(side: str, source: str, settings: dict[str, Any]) -> None:
    """Worker loop: load, say ready, then answer one JSON request per line of standard input."""
    import warnings

    from PIL import Image

    warnings.simplefilter("ignore")
    started = time.perf_counter()
    worker = OursWorker(source, settings) if side == "ours" else OpenVINOWorker(source, settings)
    ready = {"load_seconds": time.perf_counter() - started, "rss_after_load_mb": peak_rss_mb(), **worker.describe}
    print(json.dumps(ready), flush=True)
    picture = Image.open(PICTURE).convert("RGB")
    for line in sys.stdin:
        request = json.loads(line)
        answer = worker.answer(picture, **request)
        print(json.dumps(asdict(answer)), flush=True)


# ---------------------------------------------------------------- the peer's environment


def ensure_peer(venv: Path) -> Path:
    """The peer's Python, its pinned packages installed (again when the pins changed)."""
    python = venv / "bin" / "python"
    pins = PEER_REQUIREMENTS.read_bytes()
    stamp = venv / ".pins-sha256"
    if python.exists() and stamp.exists() and stamp.read_text() == hashlib.sha256(pins).hexdigest():
        return python
    say(f"installing the OpenVINO peer into {venv} (pinned in {PEER_REQUIREMENTS.name})")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "-r", str(PEER_REQUIREMENTS)],
                   check=True)
    stamp.write_text(hashlib.sha256(pins).hexdigest())
    return python


def export(python: Path, checkpoint: Path, target: Path, weight_format: str) -> Path:
    """``optimum-cli export openvino`` of the checkpoint, once."""
    if (target / EXPORT_MARK).exists():
        return target
    say(f"exporting {checkpoint.name} to OpenVINO ({weight_format}) in {target}")
    command = [str(python.parent / "optimum-cli"), "export", "openvino", "--model", str(checkpoint),
               "--task", "image-text-to-text", "--weight-format", weight_format, str(target)]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env=peer_env())
    return target


def peer_env() -> dict[str, str]:
    """This environment without ``HF_HUB_OFFLINE``: with it set, optimum-intel 2.2.0 takes a local
    export's directory for a Hub id and fails to load it (the Hub is never reached either way)."""
    return {key: value for key, value in os.environ.items() if key != "HF_HUB_OFFLINE"}


# ---------------------------------------------------------------- the driver


class Process:
    """A running worker and the pipes to it."""

    def __init__(self, variant: Variant, python: Path, source: Path):
        settings = {key: value for key, value in variant.settings.items() if key != "export"}
        script = str(Path(__file__).resolve())
        command = [str(python), script, "--serve", variant.side, str(source), json.dumps(settings)]
        self.variant = variant
        env = peer_env() if variant.side == "openvino" else None
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.ready: dict[str, Any] = self._read()

    def ask(self, question: str, new_picture: bool, tokens: int) -> Answer:
        request = {"question": question, "new_picture": new_picture, "tiles": self.variant.tiles, "tokens": tokens}
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        return Answer(**self._read())

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(60)

    def _read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the worker for {self.variant.label!r} ended (exit {self.process.wait()})")
        reply: dict[str, Any] = json.loads(line)
        return reply


def start(variants: Sequence[Variant], peer: Path, checkpoint: Path, exports: dict[str, Path]) -> list[Process]:
    processes = []
    for variant in variants:
        say(f"loading {variant.label}")
        if variant.side == "ours":
            processes.append(Process(variant, Path(sys.executable), checkpoint))
        else:
            settings = {**variant.settings, "processor": str(checkpoint)}
            processes.append(Process(replace(variant, settings=settings), peer, exports[variant.settings["export"]]))
    return processes


def rounds(processes: list[Process], count: int, tokens: int) -> list[Measured]:
    """A warm-up request each, then ``count`` rounds; each round starts one variant later."""
    measured = [Measured(process.variant, process.ready) for process in processes]
    for process in processes:
        process.ask(QUESTIONS[0], True, tokens)
    for index in range(count):
        order = list(range(len(processes)))
        order = order[index % len(order):] + order[:index % len(order)]
        for position in order:
            process, record = processes[position], measured[position]
            fresh = process.ask(QUESTIONS[index % 2], True, tokens)
            follow = process.ask(QUESTIONS[2 + index % 2], False, tokens)
            record.new_picture.append(fresh)
            record.follow_up.append(follow)
            say(f"round {index + 1} {process.variant.label}: new picture {fresh.ttft:.3f} s, "
                f"follow-up {follow.ttft:.3f} s, decode {fresh.decode_rate or 0:.1f} tok/s")
    return measured


# ---------------------------------------------------------------- the report


def median(values: Sequence[float | None]) -> float | None:
    from vlm_notebook.bench import percentile

    return percentile([value for value in values if value is not None], 50)


def spread(values: Sequence[float]) -> str:
    return f"{min(values):.3f}-{max(values):.3f}" if values else "-"


def row(record: Measured) -> dict[str, Any]:
    answers = record.new_picture + record.follow_up
    fresh = [answer.ttft for answer in record.new_picture]
    follow = [answer.ttft for answer in record.follow_up]
    return {
        "variant": record.variant.label,
        "runs": len(fresh),
        "image tokens": record.new_picture[0].image_tokens,
        "first token, new picture s": median(fresh),
        "new picture min-max": spread(fresh),
        "follow-up s": median(follow),
        "follow-up min-max": spread(follow),
        "decode tok/s": median([answer.decode_rate for answer in answers]),
        "peak RSS MB": max(answer.peak_rss_mb for answer in answers),
        "computes in": record.ready.get("dtype") or record.ready.get("inference precision"),
    }


def targets(rows: dict[str, dict[str, Any]]) -> list[tuple[str, float, float, bool]]:
    """The issue's targets that the rows measured (a run can leave out one tile or the card's
    tiles): (what, measured ratio, bound, holds)."""
    ours, peer = rows.get("ours, defaults"), rows.get("OpenVINO, defaults")
    ours_card, peer_card = rows.get("ours, defaults, card tiles"), rows.get("OpenVINO, defaults, card tiles")
    fresh = "first token, new picture s"
    found = []
    if ours and peer:
        found.append(("first token, new picture, one tile: ours / OpenVINO", ours[fresh] / peer[fresh], 1.0, "<="))
    if ours_card and peer_card:
        found.append(("first token, new picture, card tiles: ours / OpenVINO",
                      ours_card[fresh] / peer_card[fresh], 1.0, "<="))
    if ours and peer:
        found += [
            ("follow-up first token: ours / OpenVINO", ours["follow-up s"] / peer["follow-up s"], 0.25, "<="),
            ("decode tokens/s: ours / OpenVINO", ours["decode tok/s"] / peer["decode tok/s"], 1.0, ">="),
            ("peak RSS: ours / OpenVINO", ours["peak RSS MB"] / peer["peak RSS MB"], 1.0, "<="),
        ]
    return [(name, ratio, bound, ratio <= bound if sense == "<=" else ratio >= bound)
            for name, ratio, bound, sense in found]


def markdown(rows: list[dict[str, Any]], found: list[tuple[str, float, float, bool]], info: dict[str, Any]) -> str:
    keys = list(rows[0])
    lines = [
        "# SmolVLM-256M on this CPU: vlm-notebook against OpenVINO (random weights)",
        "",
        f"{info['created']} · {info['cpu']} ({info['cpu_flags']}) · {info['cores']} physical cores · load average "
        f"at start {info['load_average']} · {info['tokens']} new tokens · picture 640x480 · "
        f"{info['rounds']} alternating rounds ({info['card_rounds']} with the card's tiles) · "
        f"ours: torch {info['torch']}, transformers {info['transformers']} · peer: {info['peer']}",
        "",
        "Medians; times in seconds from the request. Random weights: only the times count.",
        "",
        "| " + " | ".join(keys) + " |",
        "|" + "---|" * len(keys),
    ]
    lines += ["| " + " | ".join(_cell(record[key]) for key in keys) + " |" for record in rows]
    lines += ["", "| target | ratio | bound | holds |", "|---|---|---|---|"]
    lines += [f"| {name} | {ratio:.2f} | {bound:g} | {'yes' if ok else 'no'} |" for name, ratio, bound, ok in found]
    lines += ["", *NOTES.splitlines()]
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) and value < 100 else (
        f"{value:.0f}" if isinstance(value, float) else str(value))


NOTES = """\
How it was measured (`python benchmarks/cpu_vs_openvino.py`): one process per variant, loaded
and warmed up with one request, then rounds that go round the variants (each round starts one
variant later). *new picture*: ours empties its image store first, so the vision encoder and the
whole prefill run; *follow-up*: another question about the same picture (ours reuses the
picture's work; OpenVINO does everything again). Decode tokens/s: tokens after the first over
the time from the first token to the last, median over all requests. Peak RSS: the process's
maximum resident memory, loading included. *ours, defaults*: `SmolVLM(path)` with `dtype="auto"`
(the format in the last column, chosen from the CPU's flags), prefill on every core, decoding on
every core or one thread, whichever its first steps measured faster. *OpenVINO, defaults*: the
fp32 export loaded with no settings (OpenVINO then computes in bf16 on CPUs with bf16
instructions); *strict fp32* sets its
`INFERENCE_PRECISION_HINT` to f32; *int8 export*: `--weight-format int8`. The peer is given
`min_new_tokens` so that both sides decode the same number of tokens."""


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=5, help="rounds with one tile (default 5; 0 skips)")
    parser.add_argument("--card-rounds", type=int, default=3, help="rounds with the card's tiles (default 3; 0 skips)")
    parser.add_argument("--tokens", type=int, default=32, help="new tokens per request (default 32)")
    parser.add_argument("--peer-venv", type=Path, default=Path.home() / ".cache" / "vlm-notebook" / "openvino-peer")
    parser.add_argument("--out", type=Path, default=RESULTS / "cpu_vs_openvino.md")
    parser.add_argument("--serve", nargs=3, metavar=("SIDE", "SOURCE", "SETTINGS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        side, source, settings = args.serve
        serve(side, source, json.loads(settings))
        return

    import torch
    import transformers

    from vlm_notebook import cpu
    from vlm_notebook.random_checkpoints import random_checkpoint

    load_average = [round(value, 2) for value in os.getloadavg()]
    checkpoint = random_checkpoint("smolvlm-256m")
    peer = ensure_peer(args.peer_venv)
    exports = {fmt: export(peer, checkpoint, args.peer_venv.parent / f"openvino-smolvlm-256m-{fmt}", fmt)
               for fmt in ("fp32", "int8")}
    one_tile = [variant for variant in VARIANTS if variant.tiles == "one"]
    card = [variant for variant in VARIANTS if variant.tiles == "card"] if args.card_rounds else []
    measured = []
    for group, count in ((one_tile, args.rounds), (card, args.card_rounds)):
        if not group or not count:
            continue
        processes = start(group, peer, checkpoint, exports)
        try:
            measured += rounds(processes, count, args.tokens)
        finally:
            for process in processes:
                process.close()
    rows = {record.variant.label: row(record) for record in measured}
    found = targets(rows)
    peer_versions = next((item.ready.get("openvino") for item in measured if item.variant.side == "openvino"), "?")
    info = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"), "cpu": cpu.model_name(),
        "cpu_flags": " ".join(cpu.matrix_flags()) or "no AVX2",
        "cores": cpu.physical_cores(), "load_average": load_average, "tokens": args.tokens,
        "rounds": args.rounds, "card_rounds": args.card_rounds, "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peer": f"OpenVINO {peer_versions}, optimum-intel and transformers as pinned in {PEER_REQUIREMENTS.name}",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(markdown(list(rows.values()), found, info))
    record = {"machine": info, "rows": list(rows.values()), "targets": found,
              "ready": {item.variant.label: item.ready for item in measured},
              "runs": {item.variant.label: {"new_picture": [asdict(a) for a in item.new_picture],
                                            "follow_up": [asdict(a) for a in item.follow_up]} for item in measured}}
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=1))
    print(args.out.read_text())


if __name__ == "__main__":
    main()
