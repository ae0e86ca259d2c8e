"""The record of a training run: ``training.json`` and a short ``README.md`` model card."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import torch
import transformers

from vlm_notebook.training import smolvlm


def versions() -> dict[str, str]:
    """Versions of the software that produced a checkpoint."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def write_record(directory: Path, record: dict[str, Any]) -> None:
    """Write ``record`` as ``training.json`` in ``directory``."""
    text = json.dumps(record, indent=2, ensure_ascii=False)
    (directory / "training.json").write_text(text + "\n", encoding="utf-8")


def torch_threads(count: int) -> str:
    return f"{count} torch thread{'' if count == 1 else 's'}"


def _accuracy_line(name: str, score: dict[str, Any]) -> str:
    return f"- {name}: {score['exact']}/{score['total']} exact ({100 * score['accuracy']:.1f}%)"


def _per_prompt_rows(score: dict[str, Any]) -> list[str]:
    return [f"  - `{prompt}`: {count}" for prompt, count in score["per_prompt"].items()]


def _about(record: dict[str, Any]) -> list[str]:
    if record.get("family") == "qwen2vl":
        return _about_qwen2vl(record)
    if record.get("family") == "gemma4":
        return _about_gemma4(record)
    tile, patch = smolvlm.IMAGE_SIZE, smolvlm.PATCH_SIZE
    return [
        f"# {record['name']}",
        "",
        "A tiny SmolVLM (transformers `idefics3` architecture: SigLIP-style vision encoder,",
        "pixel-shuffle connector, Llama text model) trained from scratch on synthetic pictures",
        "of one coloured shape on a plain background (`vlm_notebook.shapes`: 4 shapes x",
        "6 colours x 3 backgrounds = 72 scenes). It captions them and answers four questions,",
        "one of them in Japanese with an emoji (multi-byte UTF-8 output for streaming tests).",
        "It knows nothing else: it is a test and demo model, not a general VLM.",
        "",
        "## Format",
        "",
        f"- {record['parameters']:,} parameters, fp32 safetensors; {tile} px tiles, patch {patch},",
        "  scale factor 2 = 16 image tokens a tile. Pictures are split as SmolVLM's processor splits them:",
        f"  resized to a longest edge of {smolvlm.LONGEST_EDGE} px, cut into {tile} px tiles (two for a long thin",
        "  picture, four for a squarish one), plus the whole picture squeezed into one more tile.",
        "- Byte-level BPE trained on the English text only; SmolVLM's special tokens and",
        "  prompt format: `<|im_start|>User:<image>Describe this image.<end_of_utterance>\\nAssistant:`",
        "- Load with `AutoProcessor` and `AutoModelForImageTextToText` (`dtype=torch.float32`);",
        "  works offline and without torchvision (PIL image processor).",
        "",
    ]


def _about_qwen2vl(record: dict[str, Any]) -> list[str]:
    return [
        f"# {record['name']}",
        "",
        "A tiny Qwen2-VL (transformers `qwen2_vl` architecture: vision transformer with 2D rotary",
        "positions and a 2x2 patch merger, Qwen2 text model with M-RoPE) trained from scratch on",
        "synthetic pictures of one coloured shape on a plain background (`vlm_notebook.shapes`:",
        "4 shapes x 6 colours x 3 backgrounds = 72 scenes). It captions them in the seven languages",
        "`caption(language=...)` offers (en, ja, zh, ko, fr, de, es: `shapes.caption(scene, language)`, e.g.",
        "`白い背景に赤い円。`, `Un cercle rouge sur fond blanc.`) and answers questions in English and Japanese.",
        "It knows nothing else: it is a test and demo model, not a general VLM.",
        "",
        "## Format",
        "",
        f"- {record['parameters']:,} parameters, fp32 safetensors; patch 14, temporal patch 2, merge 2.",
        *_qwen2vl_sizes(record),
        "- Byte-level BPE trained on the English text only, so each Japanese, Chinese or Korean character is 3 byte",
        "  tokens; Qwen's special tokens and prompt format (our own chat template, no system turn):",
        "  `<|im_start|>user\\n<|vision_start|><|image_pad|><|vision_end|>Describe this image.<|im_end|>\\n"
        "<|im_start|>assistant\\n`",
        "- Weights load with `AutoModelForImageTextToText` (`dtype=torch.float32`). transformers'",
        "  `Qwen2VLProcessor` needs torchvision for its video processor, so the directory holds the",
        "  PIL image processor, the tokenizer and `chat_template.jinja`, and",
        "  `vlm_notebook.models.Qwen2VL` builds the processor from them without a video part.",
        "",
    ]


def _qwen2vl_sizes(record: dict[str, Any]) -> list[str]:
    """How many pixels a picture keeps, in training as when the checkpoint answers."""
    low, high = record["recipe"]["min_pixels"], record["recipe"]["max_pixels"]
    return [
        "- In training as when it answers, every picture is resized, keeping its aspect ratio, to between",
        f"  {low} and {high} pixels ({low // 784} to {high // 784} image tokens; `shortest_edge` and `longest_edge`",
        "  in `preprocessor_config.json`), so that a small shape in a long thin picture stays several patches wide.",
    ]


def _about_gemma4(record: dict[str, Any]) -> list[str]:
    soft = record["recipe"]["soft_tokens"]
    return [
        f"# {record['name']}",
        "",
        "A tiny Gemma 4 (transformers `gemma4` architecture: vision encoder with 2D rotary positions and",
        "position-aware pooling, a text model with sliding and full attention layers and per-layer input",
        "embeddings) trained from scratch on synthetic pictures of one coloured shape on a plain background",
        "(`vlm_notebook.shapes`: 4 shapes x 6 colours x 3 backgrounds = 72 scenes). It captions them and",
        "answers four questions, one in Japanese with an emoji. It is the shipped checkpoint of a current",
        "architecture (Gemma 4 E2B/E4B are the most downloaded small VLMs of late 2026 whose image processor",
        "runs without torchvision); vlm-notebook loads it through its generic transformers family.",
        "It knows nothing else: it is a test and demo model, not a general VLM.",
        "",
        "## Format",
        "",
        f"- {record['parameters']:,} parameters, fp32 safetensors. Pictures keep their aspect ratio: Gemma 4's",
        f"  processor fits each to at most {4 * soft} patches of 8 px, pooled 2 x 2 into at most {soft} image tokens",
        "  (`max_soft_tokens`, the same in training as when it answers).",
        "- Byte-level BPE trained on the English text only; Gemma 4's special tokens and turn format",
        "  (our own chat template): `<bos><|turn>user\\n<|image|>Describe this image.<turn|>\\n<|turn>model\\n`",
        "- Load with `AutoProcessor` (or, without torchvision, the image processor, tokenizer and chat",
        "  template as `vlm_notebook.models.generic` does) and `AutoModelForImageTextToText`;",
        "  `get_model(\"shapes-gemma4\")` in vlm-notebook.",
        "",
    ]


def _how(record: dict[str, Any]) -> list[str]:
    if record.get("family") == "gemma4":
        stage1 = ("encoder and multimodal embedder alone: linear heads on the mean of a picture's image tokens"
                  " classify shape, colour and background.")
        frozen = record["recipe"].get("freeze_vision")
        stage2 = ("the text model (vision side frozen)" if frozen else "the whole model") + " on the answers"
    elif record.get("family") == "qwen2vl":
        stage1 = ("tower and patch merger alone: linear heads on the mean of the merged image tokens"
                  " classify shape, colour and background.")
        frozen = record["recipe"].get("freeze_vision")
        trained = "the text model (vision side frozen)" if frozen else "the whole model"
        stage2 = f"{trained} on the captions in seven languages and the answers in English and Japanese"
    else:
        stage1 = "tower alone: linear heads on its mean-pooled output classify shape, colour and background."
        stage2 = "the whole model on the answers"
    two_stages = had_vision_stage(record)
    return [
        "## How it was made",
        "",
        "```",
        record["command"],
        "```",
        "",
        f"Seed {record['seed']}, batches of {record['recipe']['batch_size']} random scenes, on {record['machine']}",
        f"with {torch_threads(record['threads'])}; {record['train_seconds']:.0f} s of training"
        f"{' in two stages' if two_stages else ''}:",
        "",
        vision_stage(record, f"{record['vision_seconds']:.0f}", f"the vision {stage1}"),
        f"2. {record['steps']} steps ({record['text_seconds']:.0f} s) training {stage2}"
        " (loss on answer tokens only), through the real processor and chat template.",
        "",
        f"{'Both stages' if two_stages else 'Training'}: AdamW, linear warmup then cosine decay, gradient clipping,"
        " deterministic kernels.",
        "",
        *training_pictures(record),
    ]


def had_vision_stage(record: dict[str, Any]) -> bool:
    """Whether the run pretrained its vision side first (``--vision-steps`` above 0)."""
    return bool(record["vision_steps"] > 0)


def vision_stage(record: dict[str, Any], seconds: str, what: str) -> str:
    """A card's first-stage line; a run with ``--vision-steps 0`` says it had none."""
    if not had_vision_stage(record):
        return "1. No vision pretraining (`--vision-steps 0`)."
    return f"1. {record['vision_steps']} steps ({seconds} s) pretraining {what}"


def training_pictures(record: dict[str, Any]) -> list[str]:
    """What the pictures were, and where the weights started, for runs that record it."""
    from vlm_notebook.training.pictures import VARIED

    recipe, lines, v = record["recipe"], [], VARIED
    if "varied_fraction" in recipe:
        canonical, varied = 100 * recipe["canonical_fraction"], 100 * recipe["varied_fraction"]
        lines += [
            f"Pictures: {canonical:.0f}% canonical drawings, {varied:.0f}% varied like users'"
            f" (`vlm_notebook.training.pictures`: aspect ratio {v.aspect[0]:g}-{v.aspect[1]:g},",
            f"short side {v.short_side[0]}-{v.short_side[1]} px, the shape at {100 * v.shape_fraction[0]:.0f}-"
            f"{100 * v.shape_fraction[1]:.0f}% of the short side anywhere, PNG, JPEG of quality",
            f"{v.jpeg_quality[0]}-{v.jpeg_quality[1]} or RGBA with a transparent white background, Gaussian noise up to"
            f" {v.noise[1]:g} levels,",
            f"decoded with `load_image` as a user's file is; {_reuse(recipe)}), the rest squares with the",
            "shape anywhere.",
            "",
        ]
    if record.get("init_from"):
        lines += [f"Started from the weights of {record.get('init_note') or record['init_from']}, not at random.", ""]
    return lines


def _reuse(recipe: dict[str, Any]) -> str:
    """How often a varied picture was shown (records before ``varied_per_scene`` used 40)."""
    from vlm_notebook.training.pictures import SMALL_SHAPES

    drawn, small = recipe.get("varied_per_scene", 40), recipe.get("small_shapes", 0.0)
    reuse = f"{drawn} drawn for each scene, then reused, mirrored at random"
    if not small:
        return reuse
    low, high = SMALL_SHAPES.shape_fraction
    return f"{reuse}; {100 * small:.0f}% of them with the shape at {100 * low:.0f}-{100 * high:.0f}% of the short side"


def _accuracy(record: dict[str, Any]) -> list[str]:
    canonical, random_set = record["evaluation"]["canonical"], record["evaluation"]["random"]
    return [
        "## Exact-match accuracy (greedy, loaded from this directory)",
        "",
        _accuracy_line("canonical drawings (centred, fixed size)", canonical),
        *_per_prompt_rows(canonical),
        _accuracy_line(f"random position and size (seed {random_set['seed']})", random_set),
        *_per_prompt_rows(random_set),
        "",
        *pictures_section(record["evaluation"].get("pictures")),
        f"Versions: torch {record['versions']['torch']}, transformers {record['versions']['transformers']}.",
        "",
    ]


def pictures_section(pictures: dict[str, Any] | None) -> list[str]:
    """The accuracy on random pictures as users send them (``training.robustness``), if measured."""
    if pictures is None:
        return []
    return [
        "## Pictures as users send them (`python -m vlm_notebook.training.robustness`)",
        "",
        f"{pictures['pictures']} random pictures (seed {pictures['seed']}; `shapes.random_picture`: aspect ratio",
        "1:3 to 3:1, short side 48-256 px, the shape at 25-60% of the short side anywhere, PNG, JPEG quality 60",
        "or RGBA PNG, passed as file bytes through the model's API). A picture is right when the caption names",
        "the shape's colour and shape and both questions (`What shape is it?`, `What colour is the shape?`) are",
        "answered exactly" + (
            "; `detect` gives one box with IoU >= 0.5 and `point` one point inside the shape." if "detect" in
            pictures["per_check"] else "."
        ),
        "",
        f"- right{_format(pictures)}: {pictures['right']}/{pictures['pictures']} ({100 * pictures['rate']:.1f}%)"
        + (f"; the checkpoint before this one: {pictures['before']}" if pictures.get("before") else ""),
        *[f"  - {name}: {count}" for name, count in pictures["per_check"].items()],
        "- by kind of picture (right/pictures):",
        *[f"  - {name}: {count}" for name, count in pictures["buckets"].items()],
        *_causes(pictures),
        *_in_bf16(pictures.get("bf16")),
        *_more(pictures.get("more")),
        "",
    ]


def _format(pictures: dict[str, Any]) -> str:
    """The number format the figures were measured in, and the machine, where the record says them
    (fp32 answers can differ between CPUs by rounding)."""
    said = [f"in {pictures['dtype']}"] if "dtype" in pictures else []
    said += [f"measured on {pictures['machine']}"] if "machine" in pictures else []
    return f" ({', '.join(said)})" if said else ""


def _in_bf16(figures: dict[str, Any] | None) -> list[str]:
    """The same pictures in bf16 (what ``dtype="auto"`` picks on CPUs with bf16 instructions), if measured."""
    if figures is None:
        return []
    return [
        f"- in bf16 (`--dtype bfloat16`, the CPU default where the CPU has bf16 instructions; measured on "
        f"{figures['machine']}): right {figures['right']}/{figures['pictures']}",
        *[f"  - {name}: {count}" for name, count in figures["per_check"].items()],
    ]


def _more(figures: dict[str, Any] | None) -> list[str]:
    """A larger sample of other random pictures, if measured: 200 pictures tell 99% from 98% only roughly."""
    if figures is None:
        return []
    before = f"; the checkpoint before this one: {figures['before']}" if figures.get("before") else ""
    return [
        f"- on {figures['pictures']} other random pictures (seed {figures['seed']}, {figures['dtype']}, measured on "
        f"{figures['machine']}): right {figures['right']}/{figures['pictures']}{before}"
    ]


def _causes(pictures: dict[str, Any]) -> list[str]:
    """Where the misses come from, when measured (``robustness.square_around_shape``)."""
    if pictures.get("misses_right_as_square", "0/0") == "0/0":  # not measured, or no miss to ask again
        return []
    return [
        "- missed pictures answered right when asked again as the square around the shape (the same pixels):",
        f"  {pictures['misses_right_as_square']}. Those misses come from how the whole picture reaches the model",
        "  (its aspect ratio and size after the processor), not from the scene; the rest from the checkpoint.",
    ]


def model_card(record: dict[str, Any]) -> str:
    """A short Markdown model card built from a training record."""
    return "\n".join([*_about(record), *_how(record), *_accuracy(record)])


def write_card(directory: Path, record: dict[str, Any]) -> None:
    """Write the model card as ``README.md`` in ``directory``."""
    (directory / "README.md").write_text(model_card(record), encoding="utf-8")
