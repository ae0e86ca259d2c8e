"""A tiny Moondream 2 (our native implementation at a small size) trained on the shapes scenes.

The network is ``vlm_notebook.models.moondream``'s, unchanged: overlapping crops (a 64 px
picture is one global and one local crop), the vision encoder and projection, the Phi-style
text model with prefix attention, the region model. Only the sizes and the tokenizer (a
byte-level BPE with Moondream-style special tokens at the same ids) differ from the published
model. It learns four tasks, in Moondream's prompt templates:

- captions at three lengths (``shapes.caption_of_length``),
- answers to the English questions of ``shapes.questions``,
- ``detect``: the shape's box as centre x, centre y and size (width, height) through the
  region model; asked for a shape that is not there, it answers EOS at once,
- ``point``: the centre of the shape's box.

Two stages, as for ``shapes-smolvlm``: the vision encoder and its projection are pretrained to
classify the scene from the image embeddings the text model reads (the global crop and the
stitched local crops), then the whole model trains on all four tasks.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, cast

import torch
from PIL import Image
from safetensors.torch import save_file
from tokenizers import Tokenizer
from torch import nn
from torch.nn import functional as F

from vlm_notebook import shapes
from vlm_notebook.models.moondream import crops
from vlm_notebook.models.moondream.checkpoint import load_network, read_config
from vlm_notebook.models.moondream.config import (
    MoondreamConfig,
    RegionConfig,
    TextConfig,
    TokenizerConfig,
    VisionConfig,
)
from vlm_notebook.models.moondream.crops import overlap_crops, stitch
from vlm_notebook.models.moondream.network import MoondreamNetwork, build_on_meta
from vlm_notebook.models.moondream.prompts import caption_prompt, locate_prompt, query_prompt
from vlm_notebook.models.moondream.text import prefix_causal_mask
from vlm_notebook.models.moondream.vision import VisionBlock
from vlm_notebook.training import robustness
from vlm_notebook.training.card import pictures_section, torch_threads, training_pictures, vision_stage
from vlm_notebook.training.hard_pictures import HardPictures, Picture, mine
from vlm_notebook.training.loop import Batch, BatchMaker, Logger, TrainConfig, TrainResult, seed_everything, train
from vlm_notebook.training.pictures import DEFAULT_MIX, EVEN_BACKGROUNDS, EVEN_SHAPES, Mix, PictureSource, random_scene
from vlm_notebook.training.robustness import iou
from vlm_notebook.training.tokenizer import build_tokenizer
from vlm_notebook.training.vision import ClassifierOutput, SceneHeads, labelled_pictures, spread_patch_kernel

IMAGE_SIZE = 64
TEXT_TOKENS = 128  # room in the context for BOS, the longest prompt and its answer
RANDOM_PICTURES = 200  # pictures as users send them in the evaluation (``training.robustness``)
SCENES = shapes.all_scenes()

# Ids 0..9 as in the published tokenizer config: 0 BOS/EOS, 1 and 2 open and close the task
# name, 3 starts the answer, 5 and 6 stand for a coordinate and a size.
SPECIAL_TOKENS = [
    "<|endoftext|>", "<|task|>", "<|task_end|>", "<|answer|>", "<|thinking|>",
    "<|coord|>", "<|size|>", "<|ground_start|>", "<|ground|>", "<|ground_end|>",
]
TASK_WORDS = {"caption": "describe", "query": "query", "detect": "detect", "point": "point"}
LENGTH_WORDS = {length: f" {length}" for length in shapes.CAPTION_LENGTHS}
QUESTIONS = [question for question, _ in shapes.questions(SCENES[0])]


@dataclass(frozen=True)
class TinySizes:
    """Widths and depths of the tiny model."""

    vision_dim: int = 128
    vision_layers: int = 2
    vision_heads: int = 4
    vision_ff: int = 256  # 768 (and proj_inner 512, text_ff 768) from the shipped checkpoint: runs M, N in
    # benchmarks/results/moondream_runs_2026-12-06.md, no gain
    patch: int = 4  # 16 x 16 image tokens a 64 px crop; 8 x 8 (patch 8) blurred shapes on elongated pictures
    # Crops of 128 px with patch 8 (the same 16 x 16 tokens, each over 4x the pixels), grown from the 64 px
    # checkpoint, got fewer pictures right than it had (benchmarks/results/moondream_crop_size.md); so did
    # 96 px of 4 px (24 x 24 tokens) within the steps tried, and their weight means (runs Q to Q6 in
    # moondream_runs_2026-12-06.md).
    crop_size: int = IMAGE_SIZE
    overlap_margin: int = 2
    max_crops: int = 4
    proj_inner: int = 256
    text_dim: int = 128
    text_layers: int = 3
    text_heads: int = 4
    text_ff: int = 384
    max_context: int = 384  # 256 image tokens and TEXT_TOKENS
    coord_bins: int = 128
    size_bins: int = 128
    region_inner: int = 256
    fourier_features: int = 64
    init_std: float = 0.06
    fourier_std: float = 2.0


def english_corpus() -> list[str]:
    """The ASCII text the BPE learns: task words, questions, answers, object names."""
    texts = [*TASK_WORDS.values(), *LENGTH_WORDS.values(), *QUESTIONS, *(f" {shape}" for shape in shapes.SHAPES)]
    for scene in SCENES:
        texts += [f" {shapes.caption_of_length(scene, length)}" for length in shapes.CAPTION_LENGTHS]
        texts += [f" {answer}" for _, answer in shapes.questions(scene) if answer.isascii()]
    return texts


def build_tiny_tokenizer() -> Tokenizer:
    return build_tokenizer(english_corpus(), SPECIAL_TOKENS)


def _ids(tokenizer: Tokenizer, text: str) -> list[int]:
    ids: list[int] = tokenizer.encode(text, add_special_tokens=False).ids
    return ids


def templates(tokenizer: Tokenizer) -> dict[str, dict[str, list[int]]]:
    """Moondream's template layout ([1] task [2] ... [3]) in the tiny tokenizer's ids."""
    found = {name: {"prefix": [1, *_ids(tokenizer, word), 2], "suffix": [3]} for name, word in TASK_WORDS.items()}
    for length, word in LENGTH_WORDS.items():
        caption = _ids(tokenizer, TASK_WORDS["caption"])
        found[f"caption_{length}"] = {"prefix": [1, *caption, 2, *_ids(tokenizer, word), 3]}
    del found["caption"]
    return found


def build_config(tokenizer: Tokenizer, sizes: TinySizes) -> MoondreamConfig:
    vision = VisionConfig(
        enc_dim=sizes.vision_dim, enc_patch_size=sizes.patch, enc_n_layers=sizes.vision_layers,
        enc_ff_dim=sizes.vision_ff, enc_n_heads=sizes.vision_heads, proj_out_dim=sizes.text_dim,
        crop_size=sizes.crop_size, max_crops=sizes.max_crops, overlap_margin=sizes.overlap_margin,
        proj_inner_dim=sizes.proj_inner,
    )
    if sizes.max_context < vision.n_patches + TEXT_TOKENS:
        raise ValueError(
            f"{sizes.crop_size} px crops of {sizes.patch} px patches give {vision.n_patches} image tokens: pass"
            f" --max-context {vision.n_patches + TEXT_TOKENS} (or more) to leave room for the prompt and answer"
        )
    return MoondreamConfig(
        text=TextConfig(
            dim=sizes.text_dim, ff_dim=sizes.text_ff, n_layers=sizes.text_layers, vocab_size=tokenizer.get_vocab_size(),
            max_context=sizes.max_context, n_heads=sizes.text_heads, n_kv_heads=sizes.text_heads,
        ),
        vision=vision,
        region=RegionConfig(
            dim=sizes.text_dim, coord_feat_dim=sizes.fourier_features, coord_out_dim=sizes.coord_bins,
            size_feat_dim=sizes.fourier_features, size_out_dim=2 * sizes.size_bins, inner_dim=sizes.region_inner,
        ),
        tokenizer=TokenizerConfig(templates=templates(tokenizer)),
    )


def build_network(config: MoondreamConfig, sizes: TinySizes) -> MoondreamNetwork:
    """A randomly initialised network (seed torch first for repeatability)."""
    net = MoondreamNetwork(config)
    for name, param in net.named_parameters():
        if name.endswith("features"):
            nn.init.normal_(param, std=sizes.fourier_std)
        elif name.endswith("bias"):
            nn.init.zeros_(param)
        elif param.ndim >= 2 and "ln" not in name.split(".")[-2]:
            nn.init.normal_(param, std=sizes.init_std)
    return net


# -- examples ------------------------------------------------------------------------------


@dataclass
class Example:
    """One training sequence after BOS and the image: prompt ids, then the targets.

    Text examples: ``answer`` ids (ending in EOS). Region examples: ``box`` (x0, y0, x1, y1)
    to find, ``with_size`` for detect; ``box`` None means the object is absent (EOS at once).
    """

    drawing: shapes.Drawing
    prompt: list[int]
    answer: list[int] = field(default_factory=list)
    box: shapes.Box | None = None
    region: bool = False
    with_size: bool = False


TASKS = ("caption", "query", "detect", "point")
#: How often each task was drawn by the records that do not say (before 2026-12-05).
EARLIER_TASK_WEIGHTS = (3, 3, 2, 1)


def training_picture(
    rng: random.Random, source: PictureSource, recipe: Recipe, hard: HardPictures | None = None
) -> Picture:
    """An example's picture: one of the ``hard`` pictures (a ``recipe.hard_fraction`` share), else a
    random scene (:func:`random_scene` with the recipe's weights) drawn by ``source``."""
    if hard is not None and rng.random() < recipe.hard_fraction:
        return hard.draw(rng)
    scene = random_scene(rng, recipe.background_weights, recipe.shape_weights)
    return scene, source.drawing(rng, scene)


def make_example(
    rng: random.Random, tokenizer: Tokenizer, config: MoondreamConfig, picture: Picture,
    task_weights: tuple[float, ...],
) -> Example:
    """A random task (``TASKS``, drawn with ``task_weights``) on ``picture``, in the prompts inference
    builds (``prompts``)."""
    scene, drawing = picture
    tokens, kind = config.tokenizer, rng.choices(list(TASKS), task_weights)[0]
    eos, encode = [tokens.eos_id], partial(_ids, tokenizer)
    if kind == "caption":
        length = rng.choice(shapes.CAPTION_LENGTHS)
        answer = shapes.caption_of_length(scene, length)
        return Example(drawing, caption_prompt(tokens, length), encode(f" {answer}") + eos)
    if kind == "query":
        return query_example(tokenizer, config, drawing, *rng.choice(shapes.questions(scene)))
    present = kind == "point" or rng.random() < 0.75
    target = scene.shape if present else rng.choice([s for s in shapes.SHAPES if s != scene.shape])
    prompt = locate_prompt(tokens, encode, kind, target)
    return Example(drawing, prompt, box=drawing.box if present else None, region=True, with_size=kind == "detect")


def query_example(
    tokenizer: Tokenizer, config: MoondreamConfig, drawing: shapes.Drawing, question: str, answer: str
) -> Example:
    """``question`` about ``drawing`` answered with ``answer``, as training and mining both ask it."""
    encode = partial(_ids, tokenizer)
    prompt = query_prompt(config.tokenizer, encode, question)
    return Example(drawing, prompt, [*encode(f" {answer}"), config.tokenizer.eos_id])


# -- the training forward ---------------------------------------------------------------------


@dataclass
class LossOutput:
    loss: torch.Tensor


@dataclass
class _Targets:
    """Where (row, position) each head is trained, and on what."""

    token: list[tuple[int, int, int]] = field(default_factory=list)
    coord: list[tuple[int, int, float]] = field(default_factory=list)
    size: list[tuple[int, int, float, float]] = field(default_factory=list)


def image_embeddings(net: MoondreamNetwork, pictures: list[Image.Image]) -> torch.Tensor:
    """(B, image tokens, dim): each picture's crops through the encoder, stitched and projected, as
    ``models.moondream.inference.image_embeddings`` does for one picture (here every crop of the
    batch goes through the encoder in one call)."""
    config = net.config.vision
    crops = [overlap_crops(picture, config) for picture in pictures]
    features = net.vision.encode(torch.cat([c.pixels for c in crops]))
    rows, start = [], 0
    for c in crops:
        count = c.pixels.shape[0]
        local = features[start + 1 : start + count].view(-1, config.grid, config.grid, config.enc_dim)
        rows.append(net.vision.project(features[start], stitch(local, c.tiling, config.overlap_margin)))
        start += count
    return torch.stack(rows)


class ShapesObjective(nn.Module):
    """The network plus the training loss of a batch of :class:`Example`."""

    def __init__(self, net: MoondreamNetwork, region_weight: float = 1.0, shape_map_weight: float = 0.0):
        super().__init__()
        self.net = net
        self.region_weight = region_weight
        self.shape_map_weight = shape_map_weight
        # trained beside the network and not saved with it: names the shape from each image token over it
        self.shape_map = nn.Linear(net.config.vision.proj_out_dim, len(shapes.SHAPES)) if shape_map_weight else None

    def _sequence(self, example: Example, row: int, prefix: int, targets: _Targets) -> torch.Tensor:
        """The embeddings after the prefix for one example; records its targets."""
        text, region, eos = self.net.text, self.net.region, self.net.config.tokenizer.eos_id
        last = prefix + len(example.prompt) - 1  # position of the last prompt token
        if not example.region:
            ids = example.prompt + example.answer[:-1]
            targets.token += [(row, last + i, token) for i, token in enumerate(example.answer)]
            return text.embed(torch.tensor(ids))
        parts = [text.embed(torch.tensor(example.prompt))]
        if example.box is None:
            targets.token.append((row, last, eos))
            return parts[0]
        x0, y0, x1, y1 = example.box
        x, y = (x0 + x1) / 2, (y0 + y1) / 2
        targets.token.append((row, last, self.net.config.tokenizer.coord_id))
        targets.coord += [(row, last, x), (row, last + 1, y)]
        parts += [region.encode_coord(torch.tensor([[x]])), region.encode_coord(torch.tensor([[y]]))]
        if example.with_size:
            targets.size.append((row, last + 2, x1 - x0, y1 - y0))
            parts.append(region.encode_size(torch.tensor([[x1 - x0, y1 - y0]])))
        targets.token.append((row, last + len(parts) - 1, eos))
        return torch.cat(parts)

    def forward(self, examples: list[Example], shape_names: list[str] | None = None) -> LossOutput:
        images = self._images(examples)
        hidden, targets = self._hidden(examples, images)
        loss = self._token_loss(hidden, targets) + self.region_weight * self._region_loss(hidden, targets)
        if self.shape_map is not None and shape_names is not None:
            loss = loss + self.shape_map_weight * self._shape_map_loss(images, examples, shape_names)
        return LossOutput(loss)

    def _shape_map_loss(self, images: torch.Tensor, examples: list[Example], shape_names: list[str]) -> torch.Tensor:
        """Cross-entropy of the shape named from each image token over the middle of the shape (the
        central half of its box, or the token nearest its centre): every such token, the pooled local
        crops' included, is taught to carry the shape itself, so squeezing an elongated picture's
        tokens onto the grid cannot average it away (issue #22)."""
        assert self.shape_map is not None
        tokens, labels = [], []
        for row, (example, name) in enumerate(zip(examples, shape_names, strict=True)):
            inside = tokens_over_middle(example.drawing.box, self.net.config.vision.grid)
            tokens.append(images[row][inside])
            labels += [shapes.SHAPES.index(name)] * int(inside.sum())
        return F.cross_entropy(self.shape_map(torch.cat(tokens)), torch.tensor(labels))

    def token_losses(self, examples: list[Example]) -> torch.Tensor:
        """(B,): each example's mean loss over its target tokens."""
        hidden, targets = self._hidden(examples, self._images(examples))
        rows = torch.tensor([row for row, _, _ in targets.token])
        losses = self._token_loss(hidden, targets, reduction="none")
        totals = losses.new_zeros(len(examples)).index_add_(0, rows, losses)
        return totals / torch.bincount(rows, minlength=len(examples)).clamp(min=1)

    def _images(self, examples: list[Example]) -> torch.Tensor:
        """(B, image tokens, dim): examples that share a picture (``Recipe.tasks_per_picture``) share
        one pass of it through the encoder."""
        pictures = {id(e.drawing.image): e.drawing.image for e in examples}
        row = {key: index for index, key in enumerate(pictures)}
        embedded = image_embeddings(self.net, list(pictures.values()))
        return embedded[[row[id(e.drawing.image)] for e in examples]]

    def _hidden(self, examples: list[Example], images: torch.Tensor) -> tuple[torch.Tensor, _Targets]:
        """The text model's hidden states of the batch, whose image embeddings are ``images``, and
        where each head is trained."""
        bos = self.net.text.embed(torch.tensor([self.net.config.tokenizer.bos_id]))
        prefix, targets = 1 + images.shape[1], _Targets()
        rows = [
            torch.cat([bos, images[row], self._sequence(e, row, prefix, targets)]) for row, e in enumerate(examples)
        ]
        x = nn.utils.rnn.pad_sequence(rows, batch_first=True)  # right padding: causal, so harmless
        return self.net.text(x, 0, mask=prefix_causal_mask(x.shape[1], prefix)), targets

    def _token_loss(self, hidden: torch.Tensor, targets: _Targets, reduction: str = "mean") -> torch.Tensor:
        rows, positions, labels = zip(*targets.token, strict=True)
        logits = self.net.text.logits(hidden[list(rows), list(positions)])
        return F.cross_entropy(logits, torch.tensor(labels), reduction=reduction)

    def _region_loss(self, hidden: torch.Tensor, targets: _Targets) -> torch.Tensor:
        region, loss = self.net.region, hidden.new_zeros(())
        if targets.coord:
            rows, positions, values = zip(*targets.coord, strict=True)
            logits = region.decode_coord(hidden[list(rows), list(positions)])
            loss = loss + F.cross_entropy(logits, region.coord_bin(torch.tensor(values)))
        if targets.size:
            rows, positions, widths, heights = zip(*targets.size, strict=True)
            logits = region.decode_size(hidden[list(rows), list(positions)])  # (N, 2, bins)
            bins = region.size_bin(torch.tensor([widths, heights]).T)  # (N, 2)
            loss = loss + F.cross_entropy(logits.reshape(-1, region.size_bins), bins.reshape(-1))
        return loss


def tokens_over_middle(box: shapes.Box, grid: int) -> torch.Tensor:
    """(grid * grid,) bool: the image tokens (row by row over the picture) whose centres lie in the
    central half of ``box`` on each axis; at least the one nearest its centre on each axis."""
    centres = (torch.arange(grid) + 0.5) / grid
    x0, y0, x1, y1 = box
    near_x = (centres - (x0 + x1) / 2).abs() <= max((x1 - x0) / 4, 0.5 / grid)
    near_y = (centres - (y0 + y1) / 2).abs() <= max((y1 - y0) / 4, 0.5 / grid)
    return (near_y[:, None] & near_x[None, :]).reshape(-1)


# -- stages ---------------------------------------------------------------------------------


class PictureClassifier(nn.Module):
    """Stage 1: scene heads on the mean of a picture's image embeddings, as the text model reads
    them. The local crops are the only undistorted view of an elongated picture (the global crop
    squeezes it to a square), so they are trained here too, not the global crop alone."""

    def __init__(self, net: MoondreamNetwork):
        super().__init__()
        self.net = net
        self.heads = SceneHeads(net.config.vision.proj_out_dim)

    def forward(self, pictures: list[Image.Image], labels: torch.Tensor) -> ClassifierOutput:
        result: ClassifierOutput = self.heads(image_embeddings(self.net, pictures).mean(dim=1), labels)
        return result


@dataclass(frozen=True)
class Recipe:
    """Everything that decides a training run besides the seed and the numbers of steps."""

    sizes: TinySizes = TinySizes()
    batch_size: int = 32
    canonical_fraction: float = 0.1
    varied_fraction: float = 0.8  # pictures like users send (``training.pictures``); the rest: random squares
    varied_per_scene: int = DEFAULT_MIX.varied_per_scene  # distinct varied pictures a scene gets
    small_shapes: float = 0.0  # of the varied pictures, those drawn from ``training.pictures.SMALL_SHAPES``
    # caption, query, detect, point: detect's box sizes on elongated pictures were the hardest part
    task_weights: tuple[float, float, float, float] = (3, 3, 4, 1)
    # examples drawn for each picture (``batch_size`` pictures a step): the encoder's pass over a picture, most
    # of a step's time, then teaches several tasks
    # (tried from the shipped checkpoint: run T in benchmarks/results/moondream_runs_2026-12-06.md, no gain)
    tasks_per_picture: int = 1
    # white, black, gray: shape names on gray missed most (low contrast; JPEG blurs colour edges)
    background_weights: tuple[float, float, float] = EVEN_BACKGROUNDS
    # circle, square, triangle, diamond: to draw the shapes a checkpoint confuses (circle, diamond) more often
    # (tried from the shipped checkpoint: run H in benchmarks/results/moondream_runs_2026-12-06.md, no gain)
    shape_weights: tuple[float, float, float, float] = EVEN_SHAPES
    vision_lr: float = 1e-3
    lr: float = 1.5e-3
    region_weight: float = 0.5  # the region losses (about 4 nats at best) would otherwise swamp the tokens'
    # weight of a loss that names the shape from each image token over it (``ShapesObjective._shape_map_loss``)
    # (tried from the shipped checkpoint: runs S and S3 in benchmarks/results/moondream_runs_2026-12-06.md, no gain)
    shape_map_weight: float = 0.0
    warmup_steps: int = 100
    # (scored, kept): before the whole-model stage, score this many new varied pictures on the shape question
    # with the network as it starts and keep the hardest; then draw a ``hard_fraction`` of the examples from them
    # (tried from the shipped checkpoint: runs K and L in benchmarks/results/moondream_runs_2026-12-06.md, no gain)
    hard_pictures: tuple[int, int] = (0, 0)
    hard_fraction: float = 0.0

    @property
    def mix(self) -> Mix:
        return Mix(self.canonical_fraction, self.varied_fraction, self.varied_per_scene, self.small_shapes)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Trained:
    tokenizer: Tokenizer
    net: MoondreamNetwork
    vision: TrainResult
    text: TrainResult
    hard: HardPictures | None = None


def make_batch_maker(
    tokenizer: Tokenizer, config: MoondreamConfig, recipe: Recipe, hard: HardPictures | None = None
) -> BatchMaker:
    source = PictureSource(recipe.mix, IMAGE_SIZE)

    def make_batch(rng: random.Random) -> Batch:
        examples, shape_names = [], []
        for _ in range(recipe.batch_size):  # one picture, then its examples: with one, the draws of earlier runs
            picture = training_picture(rng, source, recipe, hard)
            for _ in range(recipe.tasks_per_picture):
                examples.append(make_example(rng, tokenizer, config, picture, recipe.task_weights))
                shape_names.append(picture[0].shape)
        return cast(Batch, {"examples": examples, "shape_names": shape_names})

    return make_batch


def make_vision_batch_maker(recipe: Recipe) -> BatchMaker:
    source = PictureSource(recipe.mix, IMAGE_SIZE)

    def make_batch(rng: random.Random) -> Batch:
        pictures, labels = labelled_pictures(
            rng, source, recipe.batch_size, recipe.background_weights, recipe.shape_weights
        )
        return cast(Batch, {"pictures": pictures, "labels": labels})

    return make_batch


def train_model(
    steps: int, vision_steps: int, seed: int, recipe: Recipe = Recipe(), log: Logger = print,
    init: Path | None = None,
) -> Trained:
    """Stage 1 (``vision_steps``, data seed ``seed``): classify scenes with the vision encoder.
    Stage 2 (``steps``, data seed ``seed + 1``): all four tasks through the whole network, a share of
    them on the hardest pictures when the recipe mines them first (``hard_pictures``, seed ``seed + 2``)."""
    seed_everything(seed)
    tokenizer = build_tiny_tokenizer()
    config = build_config(tokenizer, recipe.sizes)
    net = build_network(config, recipe.sizes) if init is None else load_init(init, config).train()
    classifier = PictureClassifier(net)
    stage1 = TrainConfig(steps=vision_steps, lr=recipe.vision_lr, warmup_steps=recipe.warmup_steps, seed=seed)
    vision = train(classifier, make_vision_batch_maker(recipe), stage1, lambda m: log(f"vision {m}"))
    stage2 = TrainConfig(steps=steps, lr=recipe.lr, warmup_steps=recipe.warmup_steps, seed=seed + 1)
    objective = ShapesObjective(net, recipe.region_weight, recipe.shape_map_weight)
    hard = mine_hard_pictures(objective, tokenizer, recipe, seed + 2, log) if recipe.hard_pictures[1] else None
    maker = make_batch_maker(tokenizer, config, recipe, hard)
    text = train(objective, maker, stage2, lambda m: log(f"text {m}"))
    return Trained(tokenizer, net.eval(), vision, text, hard)


def mine_hard_pictures(
    objective: ShapesObjective, tokenizer: Tokenizer, recipe: Recipe, seed: int, log: Logger = print
) -> HardPictures:
    """The recipe's hardest pictures for ``objective``'s network as it is now: the loss of the answer
    to "What shape is it?", the question whose misses most captions share (issue #22)."""
    question, config = robustness.SHAPE_QUESTION, objective.net.config

    def score(pictures: Sequence[Picture]) -> list[float]:
        examples = [
            query_example(tokenizer, config, drawing, question, robustness.expected(scene)[question])
            for scene, drawing in pictures
        ]
        with torch.no_grad():
            return cast(list[float], objective.token_losses(examples).tolist())

    def pick_scene(rng: random.Random) -> shapes.Scene:
        return random_scene(rng, recipe.background_weights, recipe.shape_weights)

    objective.eval()
    scored, kept = recipe.hard_pictures
    hard = mine(random.Random(seed), score, scored, kept, pick_scene, recipe.small_shapes)
    log(f"kept the {kept} hardest of {scored} pictures (loss {hard.lowest_loss:.3f} and up; {hard.seconds} s)")
    return hard


def load_init(directory: Path, config: MoondreamConfig) -> MoondreamNetwork:
    """The weights a run starts from, adapted to ``config`` where it differs from the checkpoint's:

    - patches a whole multiple of ``config``'s (8 px where the recipe has 4) are refined: each patch
      kernel is summed over the blocks that become one finer patch, and the position embeddings are
      interpolated to the finer grid, so the encoder starts as the old one looking at the crop
      upscaled (nearest);
    - larger crops of the same patches (96 px of 4 px where the checkpoint has 64 px) keep the patch
      kernel and get the position embeddings interpolated to the finer grid (24 x 24 from 16 x 16);
    - larger crops with the same grid of larger patches (128 px of 8 px where the checkpoint has
      64 px of 4 px) spread each patch kernel evenly over the larger patch, so the encoder starts
      as the old one looking at the crop downscaled (box average);
    - a deeper vision encoder gets its new blocks after the old ones, with zero output projections,
      so it starts computing exactly what the checkpoint did;
    - wider MLPs (``--vision-ff``, ``--proj-inner``, ``--text-ff``) get their new hidden units with
      zero output weights (:func:`widened_mlps`), so they too start as the checkpoint;
    - more or fewer local crops (``--max-crops``) need no change: every weight carries over."""
    old, _ = read_config(directory)
    if old.vision == config.vision and old.text == config.text:
        return load_network(directory, config)
    if old.vision.enc_n_layers > config.vision.enc_n_layers:
        raise ValueError(
            f"{str(directory)!r} has {old.vision.enc_n_layers} vision layers and the recipe"
            f" {config.vision.enc_n_layers}: pass --vision-layers {old.vision.enc_n_layers} (or more)"
        )
    tensors = {name: tensor.detach().clone() for name, tensor in load_network(directory, old).state_dict().items()}
    if old.vision.grid == config.vision.grid and old.vision.enc_patch_size != config.vision.enc_patch_size:
        tensors["vision.patch_emb.weight"] = coarser_patch_kernel(
            tensors["vision.patch_emb.weight"], old.vision.enc_patch_size, config.vision.enc_patch_size
        )
    elif old.vision.enc_patch_size != config.vision.enc_patch_size:
        tensors["vision.patch_emb.weight"] = finer_patch_kernel(
            tensors["vision.patch_emb.weight"], old.vision.enc_patch_size, config.vision.enc_patch_size
        )
    if old.vision.grid != config.vision.grid:
        tensors["vision.pos_emb"] = finer_positions(tensors["vision.pos_emb"], old.vision.grid, config.vision.grid)
    tensors.update(identity_blocks(config, first=old.vision.enc_n_layers))
    root = build_on_meta(config)
    widths = {name: tensor.shape[0] for name, tensor in root.model.state_dict().items() if name.endswith("fc1.weight")}
    root.model.load_state_dict(widened_mlps(tensors, widths), strict=True, assign=True)
    return root.model


def widened_mlps(
    tensors: dict[str, torch.Tensor], widths: dict[str, int], init_std: float = TinySizes.init_std
) -> dict[str, torch.Tensor]:
    """``tensors`` with each MLP (``<name>fc1.weight`` in ``widths``) given that many hidden units:
    the new ``fc1`` rows random as in a fresh network, their biases and ``fc2`` columns zero, so
    every output is unchanged until training grows them. MLPs can grow, not shrink."""
    wider = dict(tensors)
    for name, width in widths.items():
        weight = tensors[name]
        extra, base = width - weight.shape[0], name.removesuffix("fc1.weight")
        if extra < 0:
            raise ValueError(
                f"{base}fc1 has {weight.shape[0]} hidden units and the recipe {width}: MLPs can grow, not"
                " shrink; pass --vision-ff, --proj-inner and --text-ff at least the checkpoint's"
            )
        if extra == 0:
            continue
        output = tensors[f"{base}fc2.weight"]
        wider[name] = torch.cat([weight, torch.randn(extra, weight.shape[1]) * init_std])
        wider[f"{base}fc1.bias"] = torch.cat([tensors[f"{base}fc1.bias"], weight.new_zeros(extra)])
        wider[f"{base}fc2.weight"] = torch.cat([output, output.new_zeros(output.shape[0], extra)], dim=1)
    return wider


def identity_blocks(
    config: MoondreamConfig, first: int, init_std: float = TinySizes.init_std
) -> dict[str, torch.Tensor]:
    """Tensors of vision blocks ``first`` .. the config's last that leave their input unchanged: the
    attention and MLP output projections are zero (the residual passes through), the rest is
    initialised as a fresh network's, so training can grow them."""
    template = VisionBlock(config.vision)
    tensors: dict[str, torch.Tensor] = {}
    for index in range(first, config.vision.enc_n_layers):
        for name, param in template.named_parameters():
            if name.startswith(("attn.proj", "mlp.fc2")) or name.endswith("bias"):
                value = torch.zeros_like(param)
            elif name.startswith("ln"):
                value = torch.ones_like(param)
            else:
                value = torch.randn_like(param) * init_std
            tensors[f"vision.blocks.{index}.{name}"] = value
    return tensors


def finer_patch_kernel(weight: torch.Tensor, old_patch: int, new_patch: int) -> torch.Tensor:
    """(D, C * p * p) channel-first patch kernel -> (D, C * q * q) for patches ``q = p / k`` px:
    the k x k blocks of the old kernel summed, which is what it gives on a k-times upscaled crop."""
    if old_patch % new_patch:
        raise ValueError(f"cannot refine {old_patch} px patches into {new_patch} px ones")
    block, dim = old_patch // new_patch, weight.shape[0]
    channels = weight.shape[1] // (old_patch * old_patch)
    blocks = weight.reshape(dim, channels, new_patch, block, new_patch, block)
    return blocks.sum(dim=(3, 5)).reshape(dim, channels * new_patch * new_patch)


def coarser_patch_kernel(weight: torch.Tensor, old_patch: int, new_patch: int) -> torch.Tensor:
    """(D, C * p * p) channel-first patch kernel -> (D, C * q * q) for patches ``q = k * p`` px,
    as :func:`~vlm_notebook.training.vision.spread_patch_kernel` spreads it."""
    if new_patch % old_patch:
        raise ValueError(f"cannot spread {old_patch} px patches over {new_patch} px ones")
    dim = weight.shape[0]
    square = weight.reshape(dim, -1, old_patch, old_patch)
    return spread_patch_kernel(square, new_patch // old_patch).reshape(dim, -1)


def finer_positions(pos_emb: torch.Tensor, old_grid: int, new_grid: int) -> torch.Tensor:
    """(1, g * g, D) position embeddings -> (1, G * G, D), bilinear over the grid."""
    dim = pos_emb.shape[-1]
    grid = pos_emb.reshape(1, old_grid, old_grid, dim).permute(0, 3, 1, 2)
    resized = F.interpolate(grid, size=(new_grid, new_grid), mode="bilinear", align_corners=False)
    return resized.permute(0, 2, 3, 1).reshape(1, new_grid * new_grid, dim)


def resizer() -> str:
    """What resizes the crops here: libvips when pyvips is installed, else PIL (see ``crops``)."""
    return "libvips (pyvips)" if crops.PYVIPS is not None else "PIL Lanczos (pyvips not installed)"


def save(tokenizer: Tokenizer, net: MoondreamNetwork, directory: Path) -> None:
    """config.json (Moondream's ``moondream1`` layout), model.safetensors, tokenizer.json."""
    directory.mkdir(parents=True, exist_ok=True)
    root = nn.Module()
    root.add_module("model", net)  # names as in the published file: model.vision.*, model.text.*, ...
    tensors = {name: tensor.detach().contiguous() for name, tensor in root.state_dict().items()}
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    config = {"model_type": "moondream1", "config": net.config.to_dict(), "tokenizer_file": "tokenizer.json"}
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    tokenizer.save(str(directory / "tokenizer.json"))


# -- evaluation -----------------------------------------------------------------------------


def _checks(model: Any, scene: shapes.Scene, drawing: shapes.Drawing) -> dict[str, bool]:
    """Every task on one drawing (encoded once): task name -> correct."""
    encoded = model.encode_image(drawing.image)
    results = {
        f"caption {length}": model.caption(encoded, length=length) == shapes.caption_of_length(scene, length)
        for length in shapes.CAPTION_LENGTHS
    }
    results.update({question: model.query(encoded, question) == answer for question, answer in shapes.questions(scene)})
    boxes = model.detect(encoded, scene.shape)
    results["detect"] = len(boxes) == 1 and iou(tuple(boxes[0].values()), drawing.box) >= 0.5
    absent = shapes.SHAPES[(shapes.SHAPES.index(scene.shape) + 1) % len(shapes.SHAPES)]
    results["detect absent shape"] = model.detect(encoded, absent) == []
    points = model.point(encoded, scene.shape)
    x0, y0, x1, y1 = drawing.box
    results["point"] = len(points) == 1 and x0 <= points[0]["x"] <= x1 and y0 <= points[0]["y"] <= y1
    return results


def _score(model: Any, cases: list[tuple[shapes.Scene, shapes.Drawing]]) -> dict[str, Any]:
    per_task: dict[str, list[bool]] = {}
    for scene, drawing in cases:
        for task, ok in _checks(model, scene, drawing).items():
            per_task.setdefault(task, []).append(ok)
    exact = sum(sum(oks) for oks in per_task.values())
    total = sum(len(oks) for oks in per_task.values())
    return {
        "exact": exact,
        "total": total,
        "accuracy": round(exact / total, 4),
        "per_prompt": {task: f"{sum(oks)}/{len(oks)}" for task, oks in per_task.items()},
    }


def evaluate_dir(directory: Path, random_seed: int) -> dict[str, Any]:
    """Load the saved directory through ``Moondream`` in fp32 (the format it was trained and saved in,
    as the other recipes' evaluations) and score every task on every scene, canonical drawings and one
    random-position drawing per scene, then on random pictures as users send them."""
    from vlm_notebook.models.moondream import Moondream

    model = Moondream(str(directory), dtype="float32")
    rng = random.Random(random_seed)
    canonical = [(scene, shapes.draw(scene, IMAGE_SIZE)) for scene in SCENES]
    placed = [(scene, shapes.draw(scene, IMAGE_SIZE, rng)) for scene in SCENES]
    pictures = robustness.figures(model, RANDOM_PICTURES)
    return {"canonical": _score(model, canonical), "random": _score(model, placed), "pictures": pictures}


def _task_mix(recipe: dict[str, Any]) -> str:
    """How often each task, background and shape was drawn, and the weight of the region losses; each
    option a run may leave at its default is named only where the run set it."""
    tasks = _proportions(TASKS, recipe.get("task_weights", EARLIER_TASK_WEIGHTS))
    backgrounds = _proportions(shapes.BACKGROUNDS, recipe.get("background_weights", EVEN_BACKGROUNDS))
    per_picture = recipe.get("tasks_per_picture", 1)
    shape_weights = recipe.get("shape_weights", EVEN_SHAPES)
    shape_map = recipe.get("shape_map_weight", 0.0)
    several_tasks = f", {per_picture} for each picture" if per_picture > 1 else ""
    uneven_shapes = (
        f" shapes in proportions {_proportions(shapes.SHAPES, shape_weights)};" if len(set(shape_weights)) > 1 else ""
    )
    shape_map_loss = (
        f"; a head trained beside the network (not shipped) named the shape from each image token over the"
        f" middle of it, its loss weighted {shape_map:g}"
        if shape_map
        else ""
    )
    return (
        f"; tasks drawn in proportions {tasks}{several_tasks}; backgrounds in proportions {backgrounds};"
        f"{uneven_shapes} region losses weighted {recipe['region_weight']:g}{shape_map_loss}"
    )


def _hard_pictures(record: dict[str, Any]) -> list[str]:
    """Which pictures were drawn more often for being hard (``hard_pictures``), where a run mined them."""
    recipe = record["recipe"]
    scored, kept = recipe.get("hard_pictures", (0, 0))
    if not kept:
        return []
    mined = record["hard_mining"]
    return [
        f"Hard pictures (`vlm_notebook.training.hard_pictures`): before the whole-network training,"
        f" {scored} new varied pictures were scored on \"{robustness.SHAPE_QUESTION}\" with the"
        f" starting weights ({mined['seconds']} s); the {kept} with the highest loss (from"
        f" {mined['lowest_loss']:g}) made up {100 * recipe['hard_fraction']:.0f}% of the examples.",
        "",
    ]


def _proportions(names: Sequence[str], weights: Sequence[float]) -> str:
    return ", ".join(f"{name} {weight:g}" for name, weight in zip(names, weights, strict=True))


def model_card(record: dict[str, Any]) -> str:
    """The checkpoint's README.md."""
    sizes = record["recipe"]["sizes"]
    crop = sizes.get("crop_size", IMAGE_SIZE)  # records before crop sizes were an option had 64 px
    lines = [
        f"# {record['name']}",
        "",
        "A tiny Moondream 2: vlm-notebook's native implementation of the 2025-06-21 release",
        "(`vlm_notebook.models.moondream`: overlapping crops, SigLIP-style vision encoder and projection,",
        "Phi-style text model with prefix attention, region model) at a small size, trained from scratch",
        "on synthetic pictures of one coloured shape on a plain background (`vlm_notebook.shapes`: 72 scenes).",
        "It captions them at three lengths, answers four questions (one in Japanese with an emoji),",
        "and finds the shape (`detect`, `point`). It was also trained to find nothing when asked for a",
        "shape that is not there, and has not learnt that well (see the scores). It knows nothing else:",
        "it is a test and demo model, not a general VLM.",
        "",
        "## Format",
        "",
        f"- {record['parameters']:,} parameters, fp32 `model.safetensors` with the published tensor names",
        f"  (`model.vision.*`, `model.text.*`, `model.region.*`); vision {sizes['vision_dim']} wide x"
        f" {sizes['vision_layers']} layers (MLPs of {sizes['vision_ff']}), patch {sizes['patch']},",
        f"  {crop} px crops ({(crop // sizes['patch']) ** 2} image tokens; a global crop and at most"
        f" {sizes['max_crops']} local ones), projection MLP of {sizes['proj_inner']}; text {sizes['text_dim']}"
        f" wide x {sizes['text_layers']} layers (MLPs of {sizes['text_ff']}); {sizes['coord_bins']} coordinate bins.",
        "- `config.json` has Moondream's `moondream1` layout; its `config` entry gives every size and the",
        "  prompt templates in this checkpoint's token ids. `tokenizer.json`: a byte-level BPE trained on the",
        "  English text, with Moondream's special-token ids (0 BOS/EOS, 1-2 task, 3 answer, 5 coord, 6 size).",
        "- Load with `Moondream('shapes-moondream')`, offline.",
        "",
        "## How it was made",
        "",
        "```",
        record["command"],
        "```",
        "",
        f"Seed {record['seed']}, batches of {record['recipe']['batch_size']} random scenes and tasks, on"
        f" {record['machine']} with {torch_threads(record['threads'])}; {record['train_seconds']} s of training:",
        "",
        vision_stage(
            record,
            str(record["vision_seconds"]),
            "the vision encoder and its projection (linear heads on the mean of the image embeddings, global and"
            " local crops, classify shape, colour and background).",
        ),
        f"2. {record['steps']} steps ({record['text_seconds']} s) training the whole network on captions,"
        " answers (token loss) and boxes and points (region-model losses)" + _task_mix(record["recipe"]) + ".",
        "",
        *training_pictures(record),
        *_hard_pictures(record),
        f"Prompts as `vlm_notebook.models.moondream.prompts` builds them (a query ends with the answer token twice);"
        f" crops resized with {record.get('resizer', 'PIL Lanczos')}.",
        "",
        "## Accuracy (greedy, loaded from this directory)",
        "",
    ]
    for name, title in (("canonical", "canonical drawings"), ("random", "one random-position drawing per scene")):
        score = record["evaluation"][name]
        lines.append(f"- {title}: {score['exact']}/{score['total']} correct ({100 * score['accuracy']:.1f}%)")
        lines += [f"  - {task}: {count}" for task, count in score["per_prompt"].items()]
    lines += ["", *pictures_section(record["evaluation"].get("pictures"))]
    lines += [
        "Captions and answers count when exact; `detect` when it gives one box with IoU >= 0.5 against",
        "the drawn box; `point` when it gives one point inside it; an absent shape when `detect` gives none.",
        "Where it fails, by the scores above: mostly the shape's name (in captions and answers; circle",
        "and diamond, circle and square confused) on off-centre or resized drawings, most often on the gray",
        "background (the colours stand out from it least, and JPEG blurs colour edges), and shapes that are",
        "not there but are still \"found\". Boxes on elongated pictures came out nearly square in the",
        "picture's own coordinates until runs with more small shapes (a `small_shapes` share in the recipe).",
        "",
    ]
    return "\n".join(lines)
