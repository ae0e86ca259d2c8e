"""A tiny Qwen2-VL (transformers' ``qwen2_vl`` architecture) trained on the shapes scenes:
captions in the seven languages ``caption(language=...)`` offers, questions in English and Japanese.

The real thing at a small size: ``Qwen2VLConfig`` and ``AutoModelForImageTextToText``
(vision transformer with 2D rotary positions, patch merger, Qwen2 text model with M-RoPE),
``Qwen2VLProcessor`` with the PIL image processor and no video processor (so no
torchvision), a byte-level BPE with Qwen's special tokens, and our own chat template that
renders Qwen's prompt format (without the default system turn)::

    <|im_start|>user\\n<|vision_start|><|image_pad|><|vision_end|>Describe this image.<|im_end|>\\n
    <|im_start|>assistant\\n

Every picture is resized, keeping its aspect ratio, to between :data:`MIN_PIXELS` and
:data:`MAX_PIXELS` (patch 14, temporal patch 2, merge 2: 784 pixels an image token), in training as
in answering (``Recipe.min_pixels`` and ``max_pixels``). (At 56 px, 4 image tokens, a first run
reached 100% on canonical drawings but only 91.5% on randomly placed shapes.) The BPE is trained on
the English text only, so Japanese, Chinese and Korean stay byte tokens (3 per character).
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import torch
from transformers import (
    AutoModelForImageTextToText,
    GenerationConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2VLConfig,
    Qwen2VLImageProcessorPil,
    Qwen2VLProcessor,
)

from vlm_notebook import shapes
from vlm_notebook.models.generic import image_only, load_image_only_processor
from vlm_notebook.training.conversations import answer_batch_maker
from vlm_notebook.training.loop import (
    Batch,
    BatchMaker,
    Logger,
    TrainConfig,
    Trained,
    TrainResult,
    load_start_weights,
    seed_everything,
    train,
)
from vlm_notebook.training.pictures import DEFAULT_MIX, Mix, PictureSource
from vlm_notebook.training.tokenizer import build_tokenizer
from vlm_notebook.training.vision import SceneHeads, labelled_pictures

#: The fewest and most pixels a picture keeps. Earlier checkpoints saw every picture at 112 * 112
#: (16 image tokens): a long thin picture shrank until its shape was a few pixels across, and most
#: misses on random pictures were right as the square around the shape (issue #22, item 2); until
#: 2026-12-05 they saw 40 to 120 image tokens, and most misses were still right as that square.
#: Trained and answering at these sizes, a small shape stays several patches wide (the card's
#: robustness figures); the same weights asked at sizes they were not trained at do worse.
MIN_PIXELS = 64 * 28 * 28
MAX_PIXELS = 240 * 28 * 28
PATCH_SIZE = 14
TEMPORAL_PATCH_SIZE = 2
MERGE_SIZE = 2

ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
VISION_START, VISION_END, VISION_PAD = "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>"
IMAGE_PAD, VIDEO_PAD = "<|image_pad|>", "<|video_pad|>"
SPECIAL_TOKENS = [ENDOFTEXT, IM_START, IM_END, VISION_START, VISION_END, VISION_PAD, IMAGE_PAD, VIDEO_PAD]

SCENES = shapes.all_scenes()

# Our own Jinja template; it renders Qwen2-VL's published format for one user turn with an
# image (vision markers around the image pad, text after), minus the default system turn.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


@dataclass(frozen=True)
class TinySizes:
    """Widths and depths of the tiny model (text head_dim 32, M-RoPE sections 4+6+6)."""

    vision_hidden: int = 128
    vision_layers: int = 2
    vision_heads: int = 4
    vision_mlp_ratio: int = 2
    vision_init_std: float = 0.08
    text_hidden: int = 128
    text_layers: int = 2
    text_heads: int = 4
    text_kv_heads: int = 2
    text_mlp: int = 256
    text_init_std: float = 0.06
    mrope_section: tuple[int, int, int] = (4, 6, 6)
    max_positions: int = 512


def all_examples(scene: shapes.Scene) -> list[tuple[str, str]]:
    """The scene's (prompt, answer) pairs in every language: captions in all seven, questions in two."""
    return [pair for language in shapes.CAPTION_LANGUAGES for pair in shapes.examples(scene, language)]


def english_corpus() -> list[str]:
    """The ASCII text the BPE is trained on: English prompts, answers and chat-template words."""
    texts = ["user", "assistant", "system", "\n"]
    for scene in SCENES:
        for prompt, answer in shapes.examples(scene):
            texts.append(prompt)
            if answer.isascii():
                texts.append(answer)
    return texts


def build_tokenizer_fast() -> PreTrainedTokenizerFast:
    """The byte-level BPE wrapped for transformers, with Qwen2-VL's special tokens."""
    backend = build_tokenizer(english_corpus(), SPECIAL_TOKENS)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        extra_special_tokens=[IM_START, VISION_START, VISION_END, VISION_PAD, IMAGE_PAD, VIDEO_PAD],
        padding_side="left",  # for batched generation; training batches pad on the right
        model_max_length=TinySizes().max_positions,
    )


def build_image_processor(min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS) -> Qwen2VLImageProcessorPil:
    """PIL image processor: every picture resized, keeping its aspect ratio, to between ``min_pixels``
    and ``max_pixels`` (784 pixels an image token)."""
    return Qwen2VLImageProcessorPil(
        min_pixels=min_pixels,
        max_pixels=max_pixels,
        patch_size=PATCH_SIZE,
        temporal_patch_size=TEMPORAL_PATCH_SIZE,
        merge_size=MERGE_SIZE,
    )


def build_processor(min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS) -> Qwen2VLProcessor:
    """The real ``Qwen2VLProcessor``, without a video processor (which needs torchvision)."""
    return image_only(Qwen2VLProcessor)(
        image_processor=build_image_processor(min_pixels, max_pixels),
        tokenizer=build_tokenizer_fast(),
        video_processor=None,
        chat_template=CHAT_TEMPLATE,
    )


def load_processor(directory: Path) -> Qwen2VLProcessor:
    """Load the saved processor without torchvision."""
    processor: Qwen2VLProcessor = load_image_only_processor(directory)
    return processor


def _token_id(processor: Qwen2VLProcessor, token: str) -> int:
    return cast(int, processor.tokenizer.convert_tokens_to_ids(token))


def build_config(processor: Qwen2VLProcessor, sizes: TinySizes) -> Qwen2VLConfig:
    """A ``Qwen2VLConfig`` of the given sizes whose token ids match ``processor``."""
    ids = {name: _token_id(processor, tok) for name, tok in [("eos", IM_END), ("pad", ENDOFTEXT)]}
    vision = {
        "depth": sizes.vision_layers,
        "embed_dim": sizes.vision_hidden,
        "hidden_size": sizes.text_hidden,
        "mlp_ratio": sizes.vision_mlp_ratio,
        "num_heads": sizes.vision_heads,
        "patch_size": PATCH_SIZE,
        "temporal_patch_size": TEMPORAL_PATCH_SIZE,
        "spatial_merge_size": MERGE_SIZE,
        "initializer_range": sizes.vision_init_std,
    }
    text = {
        "vocab_size": len(processor.tokenizer),
        "hidden_size": sizes.text_hidden,
        "intermediate_size": sizes.text_mlp,
        "num_hidden_layers": sizes.text_layers,
        "num_attention_heads": sizes.text_heads,
        "num_key_value_heads": sizes.text_kv_heads,
        "max_position_embeddings": sizes.max_positions,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": list(sizes.mrope_section)},
        "rms_norm_eps": 1e-6,
        "initializer_range": sizes.text_init_std,
        "bos_token_id": ids["eos"],
        "eos_token_id": ids["eos"],
        "pad_token_id": ids["pad"],
        "tie_word_embeddings": True,
    }
    return Qwen2VLConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=_token_id(processor, IMAGE_PAD),
        video_token_id=_token_id(processor, VIDEO_PAD),
        vision_start_token_id=_token_id(processor, VISION_START),
        vision_end_token_id=_token_id(processor, VISION_END),
        tie_word_embeddings=True,
    )


def generation_config(processor: Qwen2VLProcessor) -> GenerationConfig:
    """Greedy decoding that stops at ``<|im_end|>``."""
    return GenerationConfig(
        eos_token_id=_token_id(processor, IM_END),
        pad_token_id=_token_id(processor, ENDOFTEXT),
        do_sample=False,
        max_new_tokens=64,
    )


def build_model(processor: Qwen2VLProcessor, sizes: TinySizes) -> PreTrainedModel:
    """A randomly initialised tiny Qwen2-VL in fp32 (seed torch first for repeatability)."""
    model = AutoModelForImageTextToText.from_config(build_config(processor, sizes), dtype=torch.float32)
    model.generation_config = generation_config(processor)
    return cast(PreTrainedModel, model)


def load_model(processor: Qwen2VLProcessor, directory: Path) -> PreTrainedModel:
    """A saved checkpoint's weights to start from (``--init-from``)."""
    return cast(PreTrainedModel, load_start_weights(processor, directory, generation_config(processor)))


def make_vision_batch_maker(
    processor: Qwen2VLProcessor, batch_size: int, mix: Mix = DEFAULT_MIX
) -> BatchMaker:
    """Batches for vision pretraining: flattened patches, grids and scene class labels."""

    source = PictureSource(mix)

    def make_batch(rng: random.Random) -> Batch:
        images, labels = labelled_pictures(rng, source, batch_size)
        pixels = processor.image_processor(images=images, return_tensors="pt")
        return {"pixel_values": pixels["pixel_values"], "grid_thw": pixels["image_grid_thw"], "labels": labels}

    return make_batch


class _VisionClassifier(torch.nn.Module):
    """Linear heads on the mean of the *merged* image tokens (the merger's output, which is what
    the text model reads), so both the tower and the merger learn to tell the scenes apart."""

    def __init__(self, visual: torch.nn.Module, width: int):
        super().__init__()
        self.visual = visual
        self.heads = SceneHeads(width)

    def forward(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor, labels: torch.Tensor) -> Any:
        merged = self.visual(pixel_values, grid_thw=grid_thw).pooler_output  # (image tokens of all pictures, width)
        counts = (grid_thw.prod(dim=1) // MERGE_SIZE**2).tolist()  # pictures of other shapes have other counts
        pooled = torch.stack([tokens.mean(dim=0) for tokens in merged.split(counts)])  # (pictures, width)
        return self.heads(pooled, labels)


def make_batch_maker(processor: Qwen2VLProcessor, batch_size: int, mix: Mix = DEFAULT_MIX) -> BatchMaker:
    """Random scenes and prompts in either language through the real processor; labels
    cover only the answer and its ``<|im_end|>``."""
    return answer_batch_maker(processor, batch_size, PictureSource(mix), all_examples, IM_END)


@dataclass(frozen=True)
class Recipe:
    """Everything that decides a training run besides the seed and the numbers of steps."""

    sizes: TinySizes = TinySizes()
    batch_size: int = 16
    canonical_fraction: float = 0.15
    varied_fraction: float = 0.6
    varied_per_scene: int = DEFAULT_MIX.varied_per_scene  # distinct varied pictures a scene gets
    vision_lr: float = 2e-3
    lr: float = 1e-3
    warmup_steps: int = 100
    #: The fewest and most pixels a picture keeps, in training and when the saved checkpoint answers.
    min_pixels: int = MIN_PIXELS
    max_pixels: int = MAX_PIXELS
    # Stage 2 trains the text model only: with the tower trainable, a first run learnt colours
    # but lost shapes (shape words at chance, loss stuck at 0.06).
    freeze_vision: bool = True

    @property
    def mix(self) -> Mix:
        return Mix(self.canonical_fraction, self.varied_fraction, self.varied_per_scene)

    def as_dict(self) -> dict[str, Any]:
        """The recipe as plain JSON-ready values."""
        return asdict(self)


def pretrain_vision(
    processor: Qwen2VLProcessor, model: PreTrainedModel, steps: int, seed: int, recipe: Recipe, log: Logger
) -> TrainResult:
    """Stage 1: train the vision tower and merger alone to classify shape, colour and background."""
    classifier = _VisionClassifier(model.model.visual, recipe.sizes.text_hidden)
    config = TrainConfig(steps=steps, lr=recipe.vision_lr, warmup_steps=recipe.warmup_steps, seed=seed)
    maker = make_vision_batch_maker(processor, recipe.batch_size, recipe.mix)
    return train(classifier, maker, config, log)


def train_model(
    steps: int, vision_steps: int, seed: int, recipe: Recipe = Recipe(), log: Logger = print,
    init: Path | None = None,
) -> Trained:
    """Build the processor and a fresh model; pretrain its vision tower and merger for
    ``vision_steps`` steps (data seed ``seed``), then train the text model (and, unless
    ``recipe.freeze_vision``, the vision side) on the answers in both languages for ``steps``
    steps (data seed ``seed + 1``)."""
    seed_everything(seed)
    processor = build_processor(recipe.min_pixels, recipe.max_pixels)
    model = build_model(processor, recipe.sizes) if init is None else load_model(processor, init)
    vision = pretrain_vision(processor, model, vision_steps, seed, recipe, lambda m: log(f"vision {m}"))
    if recipe.freeze_vision:
        model.model.visual.requires_grad_(False)
    config = TrainConfig(steps=steps, lr=recipe.lr, warmup_steps=recipe.warmup_steps, seed=seed + 1)
    maker = make_batch_maker(processor, recipe.batch_size, recipe.mix)
    text = train(model, maker, config, lambda m: log(f"text {m}"))
    model.model.visual.requires_grad_(True)
    return Trained(processor, model, vision, text)
