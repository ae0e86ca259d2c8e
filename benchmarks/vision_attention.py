"""Many queries' attention in bf16 on this CPU: torch's fused operator, bf16 scores, one oneDNN partition.

    python benchmarks/vision_attention.py [--out FILE]

``fused`` is ``F.scaled_dot_product_attention``, as transformers' "sdpa" attention calls it;
``bf16 scores`` is ``vlm_notebook.models.attention.scores_in_bf16``: per key/value head, the scores
as one bf16 product, their softmax and the weighted values (sums in fp32, each result rounded to
bf16; causal attention in blocks of queries, each leaving out the keys after its last query);
``oneDNN partition`` is ``vlm_notebook.models.onednn_attention.attend``: the same attention traced
once and run by TorchScript's oneDNN fusion as one partition (every query over every key only).
``attend_many_queries`` takes the partition, where it fuses, or else the bf16 scores, for bf16 on a
CPU with bf16 matrix instructions from ``MANY_QUERIES`` queries on. Four parts:

1. The operator at the shapes that matter, on random inputs: SmolVLM-256M's vision encoder (a 512 px
   tile), Moondream 2's (a 378 px crop), SmolVLM-256M's text decoder on a prompt of the model
   card's 13 tiles (causal), and on a one-tile prompt (which stays on the fused operator). Medians
   of several calls; error: the largest difference from float64 attention of the same inputs,
   over the largest output.
2. SmolVLM-256M's vision encoder on the card's 13 tiles: seconds a tile with all the tiles in one
   call, and one at a time (``smolvlm.encode_tile_by_tile``, the CPU default) with the bf16 scores
   and with the oneDNN partition (the default), same process.
3. A full-size random-weight Moondream 2 (``ttft_random_moondream.py``'s checkpoint, built there
   once) in bf16: ``encode_image`` of a 640x480 picture (the crops' vision encoder and the image
   prefix, which attends both ways) with the fused operator and the crops all at once (before),
   with the bf16 scores, with the bf16 scores and the crops one at a time
   (``inference.encoded_crops``, the CPU default), and with the oneDNN partition and the crops one
   at a time (the default); two rounds, medians.
4. Whole models: the first answer token's logits in bf16 with the vision encoder and the text
   decoder on "sdpa", then on vlm-notebook's attention, each against the same model in fp32 (the
   largest difference over the largest fp32 logit), and whether the top token stays fp32's. The
   random-weight SmolVLM-256M on three pictures; the shipped ``shapes-smolvlm`` and
   ``shapes-qwen2vl`` on 12 random pictures each (their encoders see fewer patches than
   ``MANY_QUERIES``: lowered to 16 for them here, so that they go through vlm-notebook's). Last, since
   the shipped Qwen2-VL meets a new shape with each picture size and a process traces only
   ``onednn_attention.MOST_SHAPES`` shapes (later ones take the bf16 scores).

Not part of ``make test``.
"""

from __future__ import annotations

import argparse
import io
import random
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from decode_attention import machine
from PIL import Image

from vlm_notebook import random_checkpoints, shapes
from vlm_notebook.models import Moondream, Qwen2VL, SmolVLM, attention, onednn_attention
from vlm_notebook.models._prefix import vision_module
from vlm_notebook.models.hf import TransformersVLM
from vlm_notebook.models.moondream import inference

RESULTS = Path(__file__).resolve().parent / "results"
PICTURE = RESULTS / "red-circle-640x480.png"
QUESTION = "What colour is the shape?"
#: (what, batch, query heads, key/value heads, queries = keys, head size, causal)
SHAPES = (
    ("SmolVLM-256M vision, one tile", 1, 12, 12, 1024, 64, False),
    ("Moondream 2 vision, one crop", 1, 16, 16, 729, 72, False),
    ("SmolVLM-256M prefill, 13 tiles", 1, 9, 3, 889, 64, True),
    ("SmolVLM-256M prefill, one tile", 1, 9, 3, 120, 64, True),
    ("Moondream 2 image prefix (both ways)", 1, 32, 32, 730, 64, False),
)
CALLS = 30


def median_ms(call: Callable[[], object], calls: int = CALLS) -> float:
    for _ in range(3):
        call()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def operator_row(what: str, batch: int, heads: int, kv_heads: int, length: int, size: int, causal: bool) -> str:
    generator = torch.Generator().manual_seed(length)

    def part(count: int, spread: float) -> torch.Tensor:  # transformers' layout: a view of (batch, L, heads, dim)
        return torch.randn(batch, length, count, size, generator=generator).mul(spread).bfloat16().transpose(1, 2)

    query, keys, values = part(heads, 2.0), part(kv_heads, 2.0), part(kv_heads, 1.0)
    scale = size**-0.5
    grouped = heads != kv_heads
    ways: dict[str, Callable[[], torch.Tensor | None]] = {
        "fused": lambda: F.scaled_dot_product_attention(
            query, keys, values, scale=scale, is_causal=causal, enable_gqa=grouped),
        "bf16 scores": lambda: attention.scores_in_bf16(query, keys, values, scale, causal),
        "oneDNN partition": lambda: None if causal else onednn_attention.attend(query, keys, values, scale),
        "ours": lambda: attention.attend_many_queries(query, keys, values, scale, causal),
    }
    exact = F.scaled_dot_product_attention(
        query.double(), keys.double(), values.double(), scale=scale, is_causal=causal, enable_gqa=grouped
    )
    cells: dict[str, tuple[str, str]] = {}
    for way, call in ways.items():
        result = call()
        if result is None:
            cells[way] = ("-", "-")
            continue
        error = float((result.double() - exact).abs().max() / exact.abs().max())
        cells[way] = (f"{median_ms(call):.2f}", f"{error:.1e}")
    taken = "fused" if not attention.bf16_scores_pay(query, keys, causal) else (
        "bf16 scores" if cells["oneDNN partition"][0] == "-" else "oneDNN partition")
    ratio = float(cells["fused"][0]) / float(cells["ours"][0])
    times = " | ".join(cells[way][0] for way in ("fused", "bf16 scores", "oneDNN partition"))
    errors = " | ".join(cells[way][1] for way in ("fused", "bf16 scores", "oneDNN partition"))
    return (f"| {what} | {heads}/{kv_heads} x {length} x {size}{', causal' if causal else ''} | {times} | "
            f"{taken} | {ratio:.2f} | {errors} |")


def set_attention(model: TransformersVLM, implementation: str) -> None:
    for part in (vision_module(model.model), model.model.get_decoder()):
        part.set_attn_implementation(implementation)  # type: ignore[union-attr, operator]


def logits_row(label: str, fp32: TransformersVLM, bf16: TransformersVLM, pictures: Sequence[Image.Image]) -> str:
    found: dict[str, list[float]] = {"sdpa": [], attention.TRANSFORMERS_NAME: []}
    same_top: dict[str, int] = dict.fromkeys(found, 0)
    for picture in pictures:
        reference = fp32._first_logits(picture, QUESTION).double()
        for implementation in found:
            set_attention(bf16, implementation)
            logits = bf16._first_logits(picture, QUESTION).double()
            found[implementation].append(float((logits - reference).abs().max() / reference.abs().max()))
            same_top[implementation] += int(logits.argmax() == reference.argmax())
    set_attention(bf16, attention.TRANSFORMERS_NAME)
    sdpa, ours = found["sdpa"], found[attention.TRANSFORMERS_NAME]
    return (f"| {label} | {len(pictures)} | {max(sdpa):.2e} ({statistics.median(sdpa):.2e}) | "
            f"{max(ours):.2e} ({statistics.median(ours):.2e}) | {same_top['sdpa']} | "
            f"{same_top[attention.TRANSFORMERS_NAME]} |")


def loaded(model: TransformersVLM) -> TransformersVLM:
    model.load()
    return model


def random_pictures(count: int) -> list[Image.Image]:
    rng = random.Random(5)
    return [Image.open(io.BytesIO(shapes.random_picture(rng).data)).convert("RGB") for _ in range(count)]


def logits_rows() -> list[str]:
    directory = str(random_checkpoints.random_checkpoint("smolvlm-256m", image_splitting=False))
    photo = Image.open(PICTURE).convert("RGB")
    rows = [logits_row("SmolVLM-256M, random weights, one tile", loaded(SmolVLM(directory, dtype="float32")),
                       loaded(SmolVLM(directory, dtype="bfloat16")), [photo, *random_pictures(2)])]
    print(rows[-1], flush=True)
    many_queries = attention.MANY_QUERIES
    attention.MANY_QUERIES = 16
    try:
        for name, family in (("shapes-smolvlm", SmolVLM), ("shapes-qwen2vl", Qwen2VL)):
            rows.append(logits_row(f"`{name}` (from 16 queries)", loaded(family(name, dtype="float32")),
                                   loaded(family(name, dtype="bfloat16")), random_pictures(12)))
            print(rows[-1], flush=True)
    finally:
        attention.MANY_QUERIES = many_queries
    return rows


@contextmanager
def partition(on: bool) -> Iterator[None]:
    """vlm-notebook's attention with the oneDNN partition where it fuses (as it runs), or without it
    (the bf16 scores), while the block runs."""
    available = onednn_attention.available
    onednn_attention.available = available if on else lambda: False
    try:
        yield
    finally:
        onednn_attention.available = available


def tiles_row() -> str:
    directory = str(random_checkpoints.random_checkpoint("smolvlm-256m", image_splitting=True))
    model = loaded(SmolVLM(directory, dtype="bfloat16", defaults="card"))
    encoder = vision_module(model.model)
    assert encoder is not None
    tiles = model._inputs(Image.open(PICTURE).convert("RGB"), QUESTION)["pixel_values"][0]
    count = len(tiles)

    def one_call() -> object:
        return type(encoder).forward(encoder, pixel_values=tiles)

    def one_by_one() -> object:
        return encoder(pixel_values=tiles)

    def one_by_one_scores() -> object:
        with partition(on=False):
            return encoder(pixel_values=tiles)

    rounds = [(median_ms(one_call, 3), median_ms(one_by_one_scores, 3), median_ms(one_by_one, 3)) for _ in range(2)]
    at_once, scores, by_tile = (statistics.median(times) / count / 1e3 for times in zip(*rounds, strict=True))
    return f"| {count} | {at_once:.3f} | {scores:.3f} | {by_tile:.3f} | {at_once / by_tile:.2f} |"


def moondream_rows() -> list[str]:
    from ttft_random_moondream import build_random_checkpoint, checkpoint_dir, synthetic_picture

    model = Moondream(str(build_random_checkpoint(checkpoint_dir(None))), dtype="bfloat16")
    model.load()
    picture = synthetic_picture()
    one_at_a_time = inference.encoded_crops

    def all_at_once(net: Any, pixels: torch.Tensor, check: Any = None) -> torch.Tensor:
        return net.vision.encode(pixels)  # type: ignore[no-any-return]

    settings = (("fused operator, crops all at once", 10**9, all_at_once, False),
                ("bf16 scores, crops all at once", attention.MANY_QUERIES, all_at_once, False),
                ("bf16 scores, crops one at a time", attention.MANY_QUERIES, one_at_a_time, False),
                ("oneDNN partition, crops one at a time (default)", attention.MANY_QUERIES, one_at_a_time, True))
    many_queries = attention.MANY_QUERIES
    seconds: dict[str, list[float]] = {label: [] for label, *_ in settings}
    try:
        for _ in range(2):
            for label, queries, encode, fused in settings:
                attention.MANY_QUERIES, inference.encoded_crops = queries, encode
                model.image_cache.clear()
                with partition(on=fused):
                    start = time.perf_counter()
                    model.encode_image(picture)
                    seconds[label].append(time.perf_counter() - start)
    finally:
        attention.MANY_QUERIES, inference.encoded_crops = many_queries, one_at_a_time
    return [f"| {label} | {statistics.median(times):.2f} |" for label, times in seconds.items()]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=RESULTS / "vision_attention.md")
    args = parser.parse_args(argv)
    lines = [
        "# Many queries' attention in bf16: torch's fused operator, bf16 scores, one oneDNN partition", "",
        machine() + " · `python benchmarks/vision_attention.py`", "",
        f"## The operator (medians of {CALLS} calls)", "",
        "| where | heads x queries x size | fused ms | bf16 scores ms | oneDNN partition ms | vlm-notebook takes | "
        "fused / vlm-notebook | fused error | bf16 scores error | partition error |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    with torch.inference_mode():
        for shape in SHAPES:
            lines.append(operator_row(*shape))
            print(lines[-1], flush=True)
        lines += ["", "## SmolVLM-256M's vision encoder on the card's tiles (bf16, vlm-notebook's attention)", "",
                  "| tiles | s a tile, all in one call | s a tile, one at a time, bf16 scores | s a tile, one at a "
                  "time (default) | one call / default |",
                  "|---|---|---|---|---|", tiles_row()]
        print(lines[-1], flush=True)
        lines += ["", "## A full-size random-weight Moondream 2 in bf16: `encode_image` of a 640x480 picture", "",
                  "| attention and crops | seconds (median of 2) |", "|---|---|"]
        lines += moondream_rows()
        # Last: the shipped Qwen2-VL meets a new shape with each picture size, and a process traces
        # only onednn_attention.MOST_SHAPES shapes; the parts above need theirs traced.
        lines += ["", "## Whole models: first-token logits in bf16 against fp32", "",
                  "Largest difference over the largest fp32 logit: the largest over the pictures "
                  "(their median), with the encoder and the decoder on \"sdpa\" and on vlm-notebook's "
                  "attention; then how many pictures kept fp32's top token.", "",
                  "| model | pictures | sdpa | vlm-notebook | top token kept, sdpa | top token kept, ours |",
                  "|---|---|---|---|---|---|"]
        lines += logits_rows()
    print("\n".join(lines[-3:]), flush=True)
    lines += ["", "See the script's docstring for how each figure is taken."]
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
