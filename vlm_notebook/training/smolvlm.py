"""A tiny SmolVLM (transformers' ``idefics3`` architecture) trained on the shapes scenes.

Everything here is the real thing at a small size: ``Idefics3Config`` and
``AutoModelForImageTextToText``, ``Idefics3Processor`` with the PIL image processor, a
byte-level BPE wrapped in ``PreTrainedTokenizerFast`` with SmolVLM's special tokens, and
a chat template that renders SmolVLM's published prompt format::

    <|im_start|>User:<image>Describe this image.<end_of_utterance>\\nAssistant:

Tiles are 128 px, patch 16, pixel-shuffle scale 2, hence 16 image tokens per tile. Pictures are
split as SmolVLM's own processor splits them: resized so the longest edge is 256 px, each side
rounded up to whole tiles and cut into them (two for a long thin picture, four for a squarish one),
then the whole picture squeezed into one more tile. Checkpoints until 2026-12-05 saw the squeezed
tile alone (issue #22: a small shape on a long thin picture came out a few pixels across and was
misnamed); checkpoints until 2026-12-03 saw 64 px tiles at patch 8: the same tokens and patch grid,
a quarter of the pixels; :func:`load_model` carries such a checkpoint over.
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
    Idefics3Config,
    Idefics3ImageProcessorPil,
    Idefics3Processor,
    Idefics3VisionConfig,
    LlamaConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

from vlm_notebook import shapes
from vlm_notebook.training.conversations import Turn, earlier_turns, prompt_renderer
from vlm_notebook.training.loop import (
    Batch,
    BatchMaker,
    Logger,
    TrainConfig,
    Trained,
    TrainResult,
    answer_labels,
    load_start_weights,
    seed_everything,
    train,
)
from vlm_notebook.training.pictures import DEFAULT_MIX, Mix, PictureSource
from vlm_notebook.training.tokenizer import build_tokenizer
from vlm_notebook.training.vision import PooledClassifier, labelled_pictures, spread_patch_kernel

IMAGE_SIZE = 128
PATCH_SIZE = 16
SCALE_FACTOR = 2
IMAGE_SEQ_LEN = (IMAGE_SIZE // PATCH_SIZE) ** 2 // SCALE_FACTOR**2  # 16 a tile
LONGEST_EDGE = 2 * IMAGE_SIZE  # pictures are resized to this before they are cut into tiles

BOS, EOS, PAD, UNK = "<|im_start|>", "<end_of_utterance>", "<|im_end|>", "<|endoftext|>"
IMAGE, FAKE_IMAGE, GLOBAL_IMAGE = "<image>", "<fake_token_around_image>", "<global-img>"
ROW_COL_TOKENS = [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]
SPECIAL_TOKENS = [UNK, BOS, PAD, EOS, FAKE_IMAGE, IMAGE, GLOBAL_IMAGE, *ROW_COL_TOKENS]

SCENES = shapes.all_scenes()

# Our own Jinja template; it renders the same text as SmolVLM's published one: the role
# capitalised, ":" directly before an image or ": " before text, parts concatenated, each
# turn closed by "<end_of_utterance>\n", and "Assistant:" as the generation prompt.
CHAT_TEMPLATE = (
    "{{- '<|im_start|>' -}}"
    "{%- for message in messages -%}"
    "{{- message['role'] | capitalize -}}"
    "{%- if message['content'] is string -%}"
    "{{- ': ' + message['content'] -}}"
    "{%- else -%}"
    "{{- ':' if message['content'][0]['type'] == 'image' else ': ' -}}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{{- '<image>' -}}"
    "{%- elif part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<end_of_utterance>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'Assistant:' -}}{%- endif -%}"
)


@dataclass(frozen=True)
class TinySizes:
    """Widths and depths of the tiny model."""

    vision_hidden: int = 128
    vision_layers: int = 2
    vision_heads: int = 4
    vision_mlp: int = 256
    vision_init_std: float = 0.08
    text_hidden: int = 128
    text_layers: int = 2
    text_heads: int = 4
    text_kv_heads: int = 2
    text_mlp: int = 384
    text_init_std: float = 0.06
    max_positions: int = 256


def answer_text(answer: str) -> str:
    """What the model must produce after ``Assistant:``."""
    return f" {answer}{EOS}"


def english_corpus() -> list[str]:
    """The ASCII text the BPE is trained on: prompts, answers and chat-template words."""
    texts = ["User:", "Assistant:", "System:", "\n"]
    for scene in SCENES:
        for prompt, answer in shapes.examples(scene):
            texts.append(prompt)
            if answer.isascii():
                texts.append(f" {answer}")
    return texts


def build_tokenizer_fast() -> PreTrainedTokenizerFast:
    """The byte-level BPE wrapped for transformers, with SmolVLM's special tokens."""
    backend = build_tokenizer(english_corpus(), SPECIAL_TOKENS)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        extra_special_tokens=[FAKE_IMAGE, IMAGE, GLOBAL_IMAGE, *ROW_COL_TOKENS],
        padding_side="left",  # for batched generation; training batches pad on the right
        model_max_length=TinySizes().max_positions,
    )


def build_image_processor(splitting: bool = True) -> Idefics3ImageProcessorPil:
    """PIL image processor: a picture is cut into tiles plus the whole picture squeezed to one tile;
    with ``splitting`` off, only the squeezed tile."""
    return Idefics3ImageProcessorPil(
        do_image_splitting=splitting,
        size={"longest_edge": LONGEST_EDGE if splitting else IMAGE_SIZE},
        max_image_size={"longest_edge": IMAGE_SIZE},
        do_resize=True,
    )


def build_processor() -> Idefics3Processor:
    """The real ``Idefics3Processor``: 16 image tokens for each tile."""
    return Idefics3Processor(
        image_processor=build_image_processor(),
        tokenizer=build_tokenizer_fast(),
        image_seq_len=IMAGE_SEQ_LEN,
        chat_template=CHAT_TEMPLATE,
    )


def _token_id(processor: Idefics3Processor, token: str) -> int:
    return cast(int, processor.tokenizer.convert_tokens_to_ids(token))


def build_config(processor: Idefics3Processor, sizes: TinySizes) -> Idefics3Config:
    """An ``Idefics3Config`` of the given sizes whose token ids match ``processor``."""
    ids = {name: _token_id(processor, tok) for name, tok in [("bos", BOS), ("eos", EOS), ("pad", PAD)]}
    vision = Idefics3VisionConfig(
        hidden_size=sizes.vision_hidden,
        intermediate_size=sizes.vision_mlp,
        num_hidden_layers=sizes.vision_layers,
        num_attention_heads=sizes.vision_heads,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        initializer_range=sizes.vision_init_std,
    )
    text = LlamaConfig(
        vocab_size=len(processor.tokenizer),
        hidden_size=sizes.text_hidden,
        intermediate_size=sizes.text_mlp,
        num_hidden_layers=sizes.text_layers,
        num_attention_heads=sizes.text_heads,
        num_key_value_heads=sizes.text_kv_heads,
        max_position_embeddings=sizes.max_positions,
        rope_theta=100000.0,
        rms_norm_eps=1e-5,
        initializer_range=sizes.text_init_std,
        bos_token_id=ids["bos"],
        eos_token_id=ids["eos"],
        pad_token_id=ids["pad"],
    )
    return Idefics3Config(
        vision_config=vision,
        text_config=text,
        scale_factor=SCALE_FACTOR,
        image_token_id=_token_id(processor, IMAGE),
        pad_token_id=ids["pad"],
    )


def generation_config(processor: Idefics3Processor) -> GenerationConfig:
    """Greedy decoding that stops at ``<end_of_utterance>``."""
    return GenerationConfig(
        bos_token_id=_token_id(processor, BOS),
        eos_token_id=_token_id(processor, EOS),
        pad_token_id=_token_id(processor, PAD),
        do_sample=False,
        max_new_tokens=64,
    )


def build_model(processor: Idefics3Processor, sizes: TinySizes) -> PreTrainedModel:
    """A randomly initialised tiny SmolVLM in fp32 (seed torch first for repeatability)."""
    config = build_config(processor, sizes)
    model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    model.generation_config = generation_config(processor)
    return cast(PreTrainedModel, model)


def load_model(processor: Idefics3Processor, directory: Path, sizes: TinySizes) -> PreTrainedModel:
    """A saved checkpoint's weights to start from (``--init-from``); one saved with smaller tiles
    and patches (the same patch grid) comes back as :func:`with_larger_patches` makes it."""
    saved = cast(PreTrainedModel, load_start_weights(processor, directory, generation_config(processor)))
    if saved.config.vision_config.patch_size == PATCH_SIZE:
        return saved
    return with_larger_patches(saved, build_model(processor, sizes))


def with_larger_patches(saved: PreTrainedModel, model: PreTrainedModel) -> PreTrainedModel:
    """``model`` (this recipe's tile and patch size) given ``saved``'s weights, ``saved`` having the
    same grid of patches over a smaller tile. Each patch filter is spread evenly over the larger
    patch, so the new model sees a picture as the saved one saw it downscaled to its tile: it
    starts with the saved answers, and training teaches it the finer detail."""
    old, new = (m.config.vision_config.patch_size for m in (saved, model))
    if new % old or saved.config.vision_config.image_size // old != model.config.vision_config.image_size // new:
        raise ValueError(f"cannot carry {old} px patches over to {new} px patches on another grid")
    weights = saved.state_dict()
    name = "model.vision_model.embeddings.patch_embedding.weight"
    weights[name] = spread_patch_kernel(weights[name], new // old)
    model.load_state_dict(weights)
    return model


def _sample(rng: random.Random, source: PictureSource) -> tuple[shapes.Drawing, tuple[Turn, ...], str, str]:
    """One training example: a drawing, earlier turns about it (often none), and one of its scene's
    (prompt, answer) pairs."""
    scene = rng.choice(SCENES)
    drawing = source.drawing(rng, scene)
    pairs = shapes.examples(scene)
    history = earlier_turns(rng, pairs)
    prompt, answer = rng.choice(pairs)
    return drawing, history, prompt, answer


def make_vision_batch_maker(batch_size: int, mix: Mix = DEFAULT_MIX) -> BatchMaker:
    """Batches for vision pretraining: (shape, colour, background) class labels and each whole
    picture's pixels as the real image processor squeezes it into one tile (the tile every picture
    has, whichever part of it holds the shape)."""
    whole_picture = build_image_processor(splitting=False)
    source = PictureSource(mix)

    def make_batch(rng: random.Random) -> Batch:
        images, labels = labelled_pictures(rng, source, batch_size)
        pixels = whole_picture(images=[[image] for image in images], return_tensors="pt")["pixel_values"]
        return {"pixel_values": pixels[:, 0], "labels": labels}

    return make_batch


def make_batch_maker(processor: Idefics3Processor, batch_size: int, mix: Mix = DEFAULT_MIX) -> BatchMaker:
    """A batch maker for the training loop: random scenes through the real processor.

    ``mix`` says how many pictures are canonical drawings and how many vary like users'
    pictures (``training.pictures``); the rest are squares with the shape anywhere. Labels
    cover only the answer and its end token.
    """
    render = prompt_renderer(processor)
    source = PictureSource(mix)

    def make_batch(rng: random.Random) -> Batch:
        samples = [_sample(rng, source) for _ in range(batch_size)]
        texts = [render(history, prompt) + answer_text(answer) for _, history, prompt, answer in samples]
        images = [[drawing.image] for drawing, _, _, _ in samples]
        inputs = processor(text=texts, images=images, padding=True, padding_side="right", return_tensors="pt")
        lengths = [_answer_length(processor, answer) for _, _, _, answer in samples]
        batch = {k: v for k, v in inputs.items() if isinstance(v, torch.Tensor)}
        batch["labels"] = answer_labels(batch["input_ids"], batch["attention_mask"], lengths)
        return batch

    return make_batch


def _answer_length(processor: Idefics3Processor, answer: str) -> int:
    ids = processor.tokenizer(answer_text(answer), add_special_tokens=False)["input_ids"]
    return len(ids)


@dataclass(frozen=True)
class Recipe:
    """Everything that decides a training run besides the seed and the numbers of steps."""

    sizes: TinySizes = TinySizes()
    batch_size: int = 32
    canonical_fraction: float = 0.1
    varied_fraction: float = 0.75
    varied_per_scene: int = DEFAULT_MIX.varied_per_scene  # distinct varied pictures a scene gets
    vision_lr: float = 1e-3
    lr: float = 1e-3
    warmup_steps: int = 100

    @property
    def mix(self) -> Mix:
        return Mix(self.canonical_fraction, self.varied_fraction, self.varied_per_scene)

    def as_dict(self) -> dict[str, Any]:
        """The recipe as plain JSON-ready values."""
        return asdict(self)


def pretrain_vision(model: PreTrainedModel, steps: int, seed: int, recipe: Recipe, log: Logger) -> TrainResult:
    """Stage 1: train the vision tower alone to classify shape, colour and background."""
    tower = model.model.vision_model
    classifier = PooledClassifier(tower, recipe.sizes.vision_hidden)
    config = TrainConfig(steps=steps, lr=recipe.vision_lr, warmup_steps=recipe.warmup_steps, seed=seed)
    maker = make_vision_batch_maker(recipe.batch_size, recipe.mix)
    return train(classifier, maker, config, log)


def train_model(
    steps: int, vision_steps: int, seed: int, recipe: Recipe = Recipe(), log: Logger = print,
    init: Path | None = None,
) -> Trained:
    """Build the processor and a fresh model; pretrain its vision tower for ``vision_steps``
    steps (data seed ``seed``), then train the whole model on the answers for ``steps``
    steps (data seed ``seed + 1``)."""
    seed_everything(seed)
    processor = build_processor()
    model = build_model(processor, recipe.sizes) if init is None else load_model(processor, init, recipe.sizes)
    vision = pretrain_vision(model, vision_steps, seed, recipe, lambda m: log(f"vision {m}"))
    config = TrainConfig(steps=steps, lr=recipe.lr, warmup_steps=recipe.warmup_steps, seed=seed + 1)
    maker = make_batch_maker(processor, recipe.batch_size, recipe.mix)
    text = train(model, maker, config, lambda m: log(f"text {m}"))
    return Trained(processor, model, vision, text)
