"""Time to first token of a same-shape, random-weight Qwen2-VL-2B on this machine.

    python benchmarks/ttft_random_qwen2vl.py [--runs N] [--pictures 640x480,1920x1080] [--out FILE]

Builds (once, under ~/.cache/vlm-notebook/random/) a random-weight checkpoint with the shape of
Qwen/Qwen2-VL-2B-Instruct (text: hidden 1536, 28 layers, 12 heads / 2 kv, MLP 8960, vocab 151936,
tied embeddings; vision: 32 layers, 1280 wide, 16 heads, patch 14, temporal patch 2, merge 2),
loads it with ``Qwen2VL(dir, max_pixels=...)`` and streams a caption of synthetic pictures at
the model card's ``max_pixels`` (12845056) and at vlm-notebook's default (256 * 28 * 28).
Random weights: the text is meaningless, only the times and the image-token counts count.
Nothing here asserts on a time. The 1920x1080 picture at the model card's default (2691 image
tokens, 10764 patches through 32 full-attention vision layers) takes many minutes on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import gc
import json
import shlex
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoConfig,
    AutoModelForImageTextToText,
    GenerationConfig,
    PreTrainedTokenizerFast,
    Qwen2VLProcessor,
)
from ttft_random_smolvlm import (
    contention_note,
    count,
    cpu_sample,
    load_average,
    log,
    machine_lines,
    others_cores,
    spread,
    synthetic_picture,
)

from vlm_notebook.models import Qwen2VL
from vlm_notebook.models.generic import image_only
from vlm_notebook.models.qwen2vl import DEFAULT_MAX_PIXELS, MODEL_CARD_MAX_PIXELS
from vlm_notebook.random_checkpoints import default_cache_dir
from vlm_notebook.training.qwen2vl import CHAT_TEMPLATE, build_image_processor

HUB_ID = "Qwen/Qwen2-VL-2B-Instruct"
PUBLISHED_PARAMS = 2_208_985_600  # about 2209M, as counted by transformers for the published checkpoint
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "ttft_random_qwen2vl.md"
PROMPT = "Describe this image."

#: Qwen2's special tokens at their published ids.
SPECIAL_IDS = {
    "<|endoftext|>": 151643,
    "<|im_start|>": 151644,
    "<|im_end|>": 151645,
    "<|vision_start|>": 151652,
    "<|vision_end|>": 151653,
    "<|vision_pad|>": 151654,
    "<|image_pad|>": 151655,
    "<|video_pad|>": 151656,
}
TEXT_CONFIG = {
    "vocab_size": 151936,
    "hidden_size": 1536,
    "intermediate_size": 8960,
    "num_hidden_layers": 28,
    "num_attention_heads": 12,
    "num_key_value_heads": 2,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
    "tie_word_embeddings": True,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
}
VISION_CONFIG = {
    "depth": 32,
    "embed_dim": 1280,
    "hidden_size": 1536,
    "mlp_ratio": 4,
    "num_heads": 16,
    "in_chans": 3,
    "patch_size": 14,
    "temporal_patch_size": 2,
    "spatial_merge_size": 2,
}
SETTINGS = (("model-card max_pixels", MODEL_CARD_MAX_PIXELS), ("vlm-notebook default", DEFAULT_MAX_PIXELS))


@dataclass(frozen=True)
class Run:
    ttft: float
    decode: float | None
    end_to_end: float
    tokens: int
    prompt_tokens: int
    image_tokens: int


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=1, help="measured runs per setting (default 1)")
    parser.add_argument("--warmup", type=int, default=0, help="warm-up runs per setting (default 0)")
    parser.add_argument("--max-new-tokens", type=int, default=8, help="tokens to generate (default 8)")
    parser.add_argument("--pictures", default="640x480,1920x1080", help="comma-separated WIDTHxHEIGHT")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"markdown file (default {DEFAULT_OUT})")
    parser.add_argument("--cache-dir", type=Path, default=None, help=f"checkpoints (default {default_cache_dir()})")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    return parser.parse_args()


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level stand-in filling the published vocabulary, special tokens at their published ids."""
    size = 151936  # TEXT_CONFIG["vocab_size"]
    vocab = dict(SPECIAL_IDS)
    free = (i for i in range(size) if i not in SPECIAL_IDS.values())
    ordinary = sorted(pre_tokenizers.ByteLevel.alphabet()) + [f"t{i}" for i in range(size)]
    for token, index in zip(ordinary, free, strict=False):
        vocab[token] = index
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_IDS])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=[t for t in SPECIAL_IDS if t not in ("<|im_end|>", "<|endoftext|>")],
    )


def random_checkpoint(cache_dir: Path | None, seed: int = 0) -> Path:
    """Build (once) the random-weight Qwen2-VL-2B directory; reuse it afterwards."""
    directory = (cache_dir or default_cache_dir()) / f"qwen2-vl-2b-seed{seed}"
    if (directory / "model.safetensors").is_file() or (directory / "model.safetensors.index.json").is_file():
        return directory
    log(f"building random Qwen2-VL-2B in {directory} (about 9 GB of fp32 weights)")
    config = AutoConfig.for_model(
        "qwen2_vl",
        text_config=TEXT_CONFIG,
        vision_config=VISION_CONFIG,
        image_token_id=SPECIAL_IDS["<|image_pad|>"],
        video_token_id=SPECIAL_IDS["<|video_pad|>"],
        vision_start_token_id=SPECIAL_IDS["<|vision_start|>"],
        vision_end_token_id=SPECIAL_IDS["<|vision_end|>"],
        tie_word_embeddings=True,
        vlm_notebook_random_weights=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    params = sum(p.numel() for p in model.parameters())
    log(f"built {params:,} parameters (published: about {PUBLISHED_PARAMS:,})")
    model.generation_config = GenerationConfig(eos_token_id=151645, pad_token_id=151643)
    model.save_pretrained(directory)
    del model
    image_processor = build_image_processor(56 * 56, MODEL_CARD_MAX_PIXELS)  # the model card's sizes
    processor = image_only(Qwen2VLProcessor)(
        image_processor=image_processor, tokenizer=build_tokenizer(), video_processor=None, chat_template=CHAT_TEMPLATE
    )
    processor.save_pretrained(directory)
    (directory / "README.md").write_text(f"# RANDOM WEIGHTS, not {HUB_ID}: only times count.\n")
    return directory


def measure_once(model: Qwen2VL, picture: object, max_new_tokens: int) -> Run:
    stream = model.query(picture, PROMPT, stream=True, max_new_tokens=max_new_tokens)
    for _ in stream:
        pass
    stats = stream.stats
    if stats.time_to_first_token is None or stats.end_time is None:
        raise RuntimeError(f"no token was generated (finish reason {stats.finish_reason})")
    return Run(
        stats.time_to_first_token, stats.median_inter_token_latency, stats.end_time,
        stats.tokens, stats.prompt_tokens, stats.image_tokens,
    )


def main() -> None:
    args = parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    directory = random_checkpoint(args.cache_dir)
    sizes = [tuple(int(v) for v in text.split("x")) for text in args.pictures.split(",")]
    load, start = load_average(), cpu_sample()
    rows, attention = [], "unknown"
    for label, max_pixels in SETTINGS:
        model = Qwen2VL(str(directory), max_pixels=max_pixels)
        model.load()
        attention = str(getattr(model.model.config, "_attn_implementation", "unknown"))
        for width, height in sizes:
            picture = synthetic_picture(width, height)
            for _ in range(args.warmup):
                measure_once(model, picture, args.max_new_tokens)
            runs = [measure_once(model, picture, args.max_new_tokens) for _ in range(args.runs)]
            log(f"{label}, {width}x{height}: {runs}")
            rows.append(
                f"| {width}x{height} | {label} ({max_pixels}) | {count([r.image_tokens for r in runs])} "
                f"| {count([r.prompt_tokens for r in runs])} | {spread([r.ttft for r in runs])} "
                f"| {spread([r.decode for r in runs], 1000.0, 0)} | {spread([r.end_to_end for r in runs])} |"
            )
        del model
        gc.collect()
    others = others_cores(start, cpu_sample())
    text = "\n".join([
        "# Time to first token: random-weight Qwen2-VL-2B (same shape), CPU",
        "",
        "> **Random weights: the text is meaningless, only the times and image tokens count.**",
        "",
        f"- command: `{shlex.join(['python', 'benchmarks/ttft_random_qwen2vl.py', *sys.argv[1:]])}`",
        f"- date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        *machine_lines(attention),
        f"- load average at the start: {load}; at the end: {load_average()}; other processes kept {others} cores busy",
        *contention_note(others),
        f"- {args.warmup} warm-up and {args.runs} measured runs per cell; greedy; max_new_tokens {args.max_new_tokens}",
        f"- shape of {HUB_ID}: text `{json.dumps(TEXT_CONFIG)}`, vision `{json.dumps(VISION_CONFIG)}`",
        "- image tokens = (H/28) x (W/28) after resizing to a multiple of 28 within max_pixels",
        "",
        "| picture | max_pixels | image tokens | prompt tokens | time to first token (s) | decode (ms/token) "
        "| end-to-end (s) |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
    ])
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    log(f"written to {args.out}")


if __name__ == "__main__":
    main()
