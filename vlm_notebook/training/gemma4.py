"""A tiny Gemma 4 (transformers' ``gemma4`` architecture) trained on the shapes scenes (issue #19).

Gemma 4 E2B/E4B are the most downloaded small VLMs of late 2026 whose image processor runs
without torchvision, so the shipped ``shapes-gemma4`` gives offline users a current architecture
loaded through the generic transformers family. The real thing at a small size: ``Gemma4Config``
and ``AutoModelForImageTextToText`` (vision encoder with 2D rotary positions and position-aware
pooling, sliding and full attention layers, per-layer input embeddings), ``Gemma4Processor`` with
the PIL image processor and neither video processor nor audio feature extractor, a byte-level BPE
with Gemma 4's special tokens, and our own chat template rendering Gemma 4's turn format::

    <bos><|turn>user\\n<|image|>Describe this image.<turn|>\\n<|turn>model\\n

Pictures keep their aspect ratio (Gemma 4's processor fits them to a patch budget instead of
squeezing them to a square): at most ``4 * SOFT_TOKENS`` patches of 8 px, pooled 2 x 2 into at
most :data:`SOFT_TOKENS` image tokens.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import torch
from transformers import (
    AutoConfig,
    AutoModelForImageTextToText,
    Gemma4ImageProcessorPil,
    Gemma4Processor,
    GenerationConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

from vlm_notebook import shapes
from vlm_notebook.models.generic import image_only
from vlm_notebook.training.conversations import answer_batch_maker
from vlm_notebook.training.loop import (
    Batch,
    BatchMaker,
    Logger,
    TrainConfig,
    Trained,
    load_start_weights,
    seed_everything,
    train,
)
from vlm_notebook.training.pictures import DEFAULT_MIX, Mix, PictureSource
from vlm_notebook.training.tokenizer import build_tokenizer
from vlm_notebook.training.vision import SceneHeads, labelled_pictures

PATCH_SIZE = 8
POOLING = 2
#: Image tokens a picture gets at most (Gemma 4's processor offers 70, 140, 280, ...). Earlier
#: checkpoints were trained at 70; the same weights asked at 140 lost colours (issue #22), so the
#: recipe trains at the budget the saved processor answers with (``Recipe.soft_tokens``).
SOFT_TOKENS = 140

BOS, EOS, PAD, UNK = "<bos>", "<eos>", "<pad>", "<unk>"
TURN_START, TURN_END = "<|turn>", "<turn|>"
#: Gemma 4's named multimodal tokens: begin and end of an image, the image soft token, and their
#: audio and video counterparts (unused here, but the processor and config name them).
NAMED = {"boi_token": "<|image>", "eoi_token": "<image|>", "image_token": "<|image|>",
         "boa_token": "<|audio>", "eoa_token": "<audio|>", "audio_token": "<|audio|>"}
VIDEO = "<|video|>"
SPECIAL_TOKENS = [PAD, EOS, BOS, UNK, TURN_START, TURN_END, VIDEO, *NAMED.values()]

SCENES = shapes.all_scenes()

# Our own Jinja template for Gemma 4's turn format: the assistant's role is written "model",
# the picture is one image token that the processor widens to the picture's soft tokens.
CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{{- '<|turn>' + ('model' if message['role'] == 'assistant' else message['role']) + '\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{{- '<|image|>' -}}"
    "{%- elif part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<turn|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|turn>model\\n' -}}{%- endif -%}"
)


@dataclass(frozen=True)
class TinySizes:
    """Widths and depths of the tiny model (one sliding and one full attention layer)."""

    vision_hidden: int = 128
    vision_layers: int = 2
    vision_heads: int = 4
    vision_mlp: int = 256
    text_hidden: int = 128
    text_layers: int = 2
    text_heads: int = 4
    text_kv_heads: int = 2
    text_mlp: int = 384
    per_layer_input: int = 16
    init_std: float = 0.06
    sliding_window: int = 128
    max_positions: int = 512


def english_corpus() -> list[str]:
    """The ASCII text the BPE is trained on: English prompts, answers and the template's roles."""
    texts = ["user", "model", "\n"]
    for scene in SCENES:
        texts.extend(text for pair in shapes.examples(scene) for text in pair if text.isascii())
    return texts


def build_tokenizer_fast() -> PreTrainedTokenizerFast:
    """The byte-level BPE wrapped for transformers, with Gemma 4's special tokens."""
    return PreTrainedTokenizerFast(
        tokenizer_object=build_tokenizer(english_corpus(), SPECIAL_TOKENS),
        bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK,
        extra_special_tokens={**NAMED, "sot_token": TURN_START, "eot_token": TURN_END, "video_token": VIDEO},
        padding_side="left",  # for batched generation; training batches pad on the right
        model_max_length=TinySizes().max_positions,
    )


def build_processor(soft_tokens: int = SOFT_TOKENS) -> Gemma4Processor:
    """The real ``Gemma4Processor`` for pictures only (no video processor, no audio extractor)."""
    image_processor = Gemma4ImageProcessorPil(
        max_soft_tokens=soft_tokens, patch_size=PATCH_SIZE, pooling_kernel_size=POOLING
    )
    return image_only(Gemma4Processor)(
        feature_extractor=None, image_processor=image_processor, tokenizer=build_tokenizer_fast(),
        video_processor=None, chat_template=CHAT_TEMPLATE, image_seq_length=soft_tokens,
    )


def _token_id(processor: Gemma4Processor, token: str) -> int:
    return cast(int, processor.tokenizer.convert_tokens_to_ids(token))


def build_config(processor: Gemma4Processor, sizes: TinySizes) -> Any:
    """A ``Gemma4Config`` of the given sizes whose token ids match ``processor``."""
    vocab = len(processor.tokenizer)
    ids = {name: _token_id(processor, token) for name, token in NAMED.items()}
    text = {
        "vocab_size": vocab, "vocab_size_per_layer_input": vocab, "hidden_size": sizes.text_hidden,
        "hidden_size_per_layer_input": sizes.per_layer_input, "intermediate_size": sizes.text_mlp,
        "num_hidden_layers": sizes.text_layers, "num_attention_heads": sizes.text_heads,
        "num_key_value_heads": sizes.text_kv_heads, "head_dim": sizes.text_hidden // sizes.text_heads,
        "global_head_dim": sizes.text_hidden // sizes.text_heads,
        "layer_types": ["sliding_attention", "full_attention"] * (sizes.text_layers // 2),
        "sliding_window": sizes.sliding_window, "max_position_embeddings": sizes.max_positions,
        "initializer_range": sizes.init_std, "pad_token_id": _token_id(processor, PAD),
        "eos_token_id": _token_id(processor, EOS), "bos_token_id": _token_id(processor, BOS),
    }
    vision = {
        "hidden_size": sizes.vision_hidden, "intermediate_size": sizes.vision_mlp,
        "num_hidden_layers": sizes.vision_layers, "num_attention_heads": sizes.vision_heads,
        "num_key_value_heads": sizes.vision_heads, "head_dim": sizes.vision_hidden // sizes.vision_heads,
        "patch_size": PATCH_SIZE, "pooling_kernel_size": POOLING,
        "position_embedding_size": 144,  # the longest side a picture can get: 140 patches (a 1:100 picture)
        "initializer_range": sizes.init_std,
    }
    return AutoConfig.for_model(
        "gemma4", text_config=text, vision_config=vision, audio_config=None, tie_word_embeddings=True,
        boi_token_id=ids["boi_token"], eoi_token_id=ids["eoi_token"], image_token_id=ids["image_token"],
        video_token_id=_token_id(processor, VIDEO), boa_token_id=ids["boa_token"],
        eoa_token_index=ids["eoa_token"], audio_token_id=ids["audio_token"],
    )


def generation_config(processor: Gemma4Processor) -> GenerationConfig:
    """Greedy decoding that stops at the end of the model's turn (or at ``<eos>``)."""
    return GenerationConfig(
        bos_token_id=_token_id(processor, BOS),
        eos_token_id=[_token_id(processor, TURN_END), _token_id(processor, EOS)],
        pad_token_id=_token_id(processor, PAD),
        do_sample=False,
        max_new_tokens=64,
    )


def build_model(processor: Gemma4Processor, sizes: TinySizes) -> PreTrainedModel:
    """A randomly initialised tiny Gemma 4 in fp32 (seed torch first for repeatability)."""
    model = AutoModelForImageTextToText.from_config(build_config(processor, sizes), dtype=torch.float32)
    model.generation_config = generation_config(processor)
    return cast(PreTrainedModel, model)


class _VisionClassifier(torch.nn.Module):
    """Linear heads on the mean of a picture's image tokens as the text model receives them
    (the pooled encoder output after Gemma 4's multimodal embedder)."""

    def __init__(self, model: PreTrainedModel, width: int):
        super().__init__()
        self.model = model.model
        self.heads = SceneHeads(width)

    def forward(self, pixel_values: torch.Tensor, image_position_ids: torch.Tensor, labels: torch.Tensor) -> Any:
        tokens = self.model.get_image_features(pixel_values, image_position_ids).pooler_output
        return self.heads(torch.stack([picture.mean(dim=0) for picture in tokens]), labels)


def make_vision_batch_maker(processor: Gemma4Processor, batch_size: int, mix: Mix = DEFAULT_MIX) -> BatchMaker:
    """Batches for vision pretraining: patches, their positions and scene class labels."""
    source = PictureSource(mix)

    def make_batch(rng: random.Random) -> Batch:
        images, labels = labelled_pictures(rng, source, batch_size)
        pixels = processor.image_processor(images=images, return_tensors="pt")
        return {"pixel_values": pixels["pixel_values"], "image_position_ids": pixels["image_position_ids"],
                "labels": labels}

    return make_batch


def make_batch_maker(processor: Gemma4Processor, batch_size: int, mix: Mix = DEFAULT_MIX) -> BatchMaker:
    """Random scenes and English prompts (one asks for Japanese) through the real processor; labels
    cover only the answer and its end of turn."""
    return answer_batch_maker(processor, batch_size, PictureSource(mix), shapes.examples, TURN_END)


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
    soft_tokens: int = SOFT_TOKENS
    freeze_vision: bool = True  # as for Qwen2-VL: the text stage keeps what the vision stage learnt

    @property
    def mix(self) -> Mix:
        return Mix(self.canonical_fraction, self.varied_fraction, self.varied_per_scene)

    def as_dict(self) -> dict[str, Any]:
        """The recipe as plain JSON-ready values."""
        return asdict(self)


def _vision_side(model: PreTrainedModel) -> list[torch.nn.Module]:
    return [model.model.vision_tower, model.model.embed_vision]


def train_model(
    steps: int, vision_steps: int, seed: int, recipe: Recipe = Recipe(), log: Logger = print,
    init: Path | None = None,
) -> Trained:
    """Build the processor and a fresh model (or ``init``'s weights); pretrain the vision encoder
    and embedder for ``vision_steps`` steps (data seed ``seed``), then train on the answers for
    ``steps`` steps (data seed ``seed + 1``), the vision side frozen if the recipe says so."""
    seed_everything(seed)
    processor = build_processor(recipe.soft_tokens)
    if init is None:
        model = build_model(processor, recipe.sizes)
    else:
        model = cast(PreTrainedModel, load_start_weights(processor, init, generation_config(processor)))
    classifier = _VisionClassifier(model, recipe.sizes.text_hidden)
    vision_config = TrainConfig(steps=vision_steps, lr=recipe.vision_lr, warmup_steps=recipe.warmup_steps, seed=seed)
    vision_maker = make_vision_batch_maker(processor, recipe.batch_size, recipe.mix)
    vision = train(classifier, vision_maker, vision_config, lambda m: log(f"vision {m}"))
    for part in _vision_side(model):
        part.requires_grad_(not recipe.freeze_vision)
    config = TrainConfig(steps=steps, lr=recipe.lr, warmup_steps=recipe.warmup_steps, seed=seed + 1)
    text = train(model, make_batch_maker(processor, recipe.batch_size, recipe.mix), config, lambda m: log(f"text {m}"))
    for part in _vision_side(model):
        part.requires_grad_(True)
    return Trained(processor, model, vision, text)
