"""SmolVLM's picture preprocessing on this CPU: transformers' PIL processor against pixels by table.

    python benchmarks/picture_preprocessing.py [--calls N] [--out FILE]

The whole processor call (prompt and picture) of the shipped ``shapes-smolvlm`` checkpoint's
processor, told SmolVLM-256M's sizes: the model card's (longest edge 2048, tiles of 512: 13 tiles
for a 640x480 picture) and vlm-notebook's CPU default (one 512 px tile). *transformers*: the PIL
Idefics3 image processor as loaded; *by table*: the same after
``vlm_notebook.models.idefics3_pixels.pixels_by_table`` (what vlm-notebook loads). Medians of
``--calls`` calls each, alternating; both give identical tensors (checked here and in
tests/test_idefics3_pixels.py). Not part of ``make test``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from decode_attention import machine
from PIL import Image
from transformers import AutoProcessor

from vlm_notebook import registry
from vlm_notebook.models.idefics3_pixels import pixels_by_table

RESULTS = Path(__file__).resolve().parent / "results"
PICTURE = RESULTS / "red-circle-640x480.png"
PROMPT = "User:<image>Describe this picture.<end_of_utterance>\nAssistant:"
#: SmolVLM-256M's sizes: the model card's, and vlm-notebook's CPU default (``SmolVLM._processor_kwargs``).
SIZES = {
    "model card (13 tiles)": {"do_image_splitting": True, "size": {"longest_edge": 2048},
                              "max_image_size": {"longest_edge": 512}},
    "CPU default (one tile)": {"do_image_splitting": True, "size": {"longest_edge": 512},
                               "max_image_size": {"longest_edge": 512}},
}


def milliseconds(call: Callable[[], Any]) -> float:
    started = time.perf_counter()
    call()
    return (time.perf_counter() - started) * 1e3


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--out", type=Path, default=RESULTS / "picture_preprocessing.md")
    args = parser.parse_args(argv)
    directory = registry.CHECKPOINTS_DIR / "shapes-smolvlm"
    plain, by_table = AutoProcessor.from_pretrained(directory), AutoProcessor.from_pretrained(directory)
    pixels_by_table(by_table.image_processor)
    picture = Image.open(PICTURE).convert("RGB")
    lines = [
        "# SmolVLM's picture preprocessing: transformers' PIL processor against pixels by table", "",
        machine() + f" · picture 640x480 · medians of {args.calls} calls · "
        "`python benchmarks/picture_preprocessing.py`", "",
        "| sizes | tiles | transformers ms | by table ms | by table / transformers | identical |",
        "|---|---|---|---|---|---|",
    ]
    for label, sizes in SIZES.items():
        def call(processor: Any, sizes: dict[str, Any] = sizes) -> Any:
            return processor(text=PROMPT, images=[picture], return_tensors="pt", **sizes)

        expected, got = call(plain), call(by_table)
        same = expected.keys() == got.keys() and all(torch.equal(expected[key], got[key]) for key in expected)
        times: dict[str, list[float]] = {"transformers": [], "by table": []}
        for _ in range(args.calls):
            times["transformers"].append(milliseconds(lambda: call(plain)))
            times["by table"].append(milliseconds(lambda: call(by_table)))
        old, new = (statistics.median(times[name]) for name in ("transformers", "by table"))
        tiles = expected["pixel_values"].shape[1]
        lines.append(f"| {label} | {tiles} | {old:.1f} | {new:.1f} | {new / old:.2f} | {'yes' if same else 'NO'} |")
        print(lines[-1], flush=True)
    lines += ["", "Both include the prompt's tokenizing and PIL's resizing, which stay transformers'; "
              "*by table* replaces the rescaling, normalising and padding passes over every tile."]
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
