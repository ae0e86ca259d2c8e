"""Decode speed when the caller's thread has done torch work too: why loading runs on a thread of its own.

    python benchmarks/decode_threads.py [--requests N] [--out FILE]

torch's CPU builds (GNU OpenMP) keep a team of worker threads for every thread that has run
parallel work, for as long as that thread lives. A generation runs on its stream's own thread
(``vlm_notebook.stream``). When the caller's thread (a notebook's main thread) also holds a team,
the process holds more OpenMP threads than cores and OpenMP stops spinning between parallel
regions; a decode step is hundreds of small ones. ``VLM.load`` therefore runs on a thread of its
own (``models.base._on_a_thread_of_its_own``), whose team goes when it ends.

Each case is a process of its own (a team cannot be taken back from a living thread), on the
same-shape random-weight SmolVLM-256M in the CPU's default format, one 640x480 picture, 32 new
tokens, the decode thread count fixed at every core and then left to the package's own choice:

- *as loaded*: ``SmolVLM(path).load()``, nothing else on the caller's thread;
- *after torch work on the caller's thread*: the same, then one parallel torch operation on the
  caller's thread (what loading on it used to leave behind, or a user's own tensors).

Random weights: only the times count. Not part of ``make test``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "decode_threads.md"
PICTURE = HERE / "results" / "red-circle-640x480.png"
CASES = {"as loaded": False, "after torch work on the caller's thread": True}
QUESTIONS = ("What is in the picture?", "What colour is the shape?", "Is there any text?", "Where is it?")


def measure(torch_work_on_caller: bool, requests: int) -> dict[str, float | str]:
    """Decode tokens/s (median over ``requests``) with every core, then with the package's choice."""
    import torch
    from PIL import Image

    from vlm_notebook import cpu
    from vlm_notebook.models import SmolVLM
    from vlm_notebook.random_checkpoints import random_checkpoint

    model = SmolVLM(str(random_checkpoint("smolvlm-256m", image_splitting=False))).load()
    if torch_work_on_caller:
        torch.ones(2048, 2048).sum()
    picture = Image.open(PICTURE).convert("RGB")
    found: dict[str, float | str] = {"dtype": model.dtype or ""}
    for label, measure_decode in (("every core", False), ("package's choice", True)):
        cpu.set_thread_policy(decode=cpu.physical_cores(), measure_decode=measure_decode)
        rates = []
        for index in range(requests):
            stream = model.query(picture, QUESTIONS[index % len(QUESTIONS)], stream=True, max_new_tokens=32)
            stream.wait(600)
            times = stream.stats.token_times
            rates.append((len(times) - 1) / (times[-1] - times[0]))
        found[label] = statistics.median(rates)
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=6)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--case", choices=list(CASES), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.case:
        print(json.dumps(measure(CASES[args.case], args.requests)))
        return
    from vlm_notebook import cpu

    rows = []
    for case in CASES:
        command = [sys.executable, __file__, "--case", case, "--requests", str(args.requests)]
        found = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
        every_core, chosen = found["every core"], found["package's choice"]
        rows.append(f"| {case} | {found['dtype']} | {every_core:.1f} | {chosen:.1f} |")
    import torch

    lines = [
        "# Decode speed of SmolVLM-256M when the caller's thread has done torch work too",
        "",
        f"{datetime.now(UTC).isoformat(timespec='seconds')} · {cpu.described()}"
        f" · {cpu.physical_cores()} physical cores · "
        f"load average at end {[round(x, 2) for x in os.getloadavg()]} · torch {torch.__version__} · "
        f"medians of {args.requests} requests, 32 new tokens · `python benchmarks/decode_threads.py`",
        "",
        "| case | format | decode tok/s, every core | decode tok/s, the package's choice of threads |",
        "|---|---|---|---|",
        *rows,
        "",
        "Random weights: only the times count. See the script's docstring for the cases.",
        "",
    ]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
