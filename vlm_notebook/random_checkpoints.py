"""Same-shape random-weight checkpoints of published models, for measuring real-size costs offline.

A checkpoint built here has the published model's architecture, sizes and processor settings
(tile size, image splitting, image tokens per tile) but random weights and a stand-in tokenizer,
so it loads and runs through the same code as the real one and costs the same time and memory,
while the text it generates is meaningless.

    >>> from vlm_notebook.models import SmolVLM
    >>> from vlm_notebook.random_checkpoints import random_checkpoint
    >>> model = SmolVLM(str(random_checkpoint("smolvlm-256m")))

The stand-in tokenizer is byte-level with the published vocabulary size and the published ids of
SmolVLM's special tokens. Every id decodes: the ids between the byte symbols and the special
tokens are filler tokens of two or three printable ASCII characters, so even a random model's
first token shows as text at once. A few merges make the chat words and the default prompt
("User", "Assistant", "Describe", " this", " image") one token each, as a real vocabulary would;
other text is one token per byte.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoConfig,
    AutoModelForImageTextToText,
    GenerationConfig,
    Idefics3ImageProcessorPil,
    Idefics3Processor,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

from .models.hf import _no_progress_bars
from .training.smolvlm import (
    BOS,
    CHAT_TEMPLATE,
    EOS,
    FAKE_IMAGE,
    GLOBAL_IMAGE,
    IMAGE,
    PAD,
    ROW_COL_TOKENS,
    UNK,
)

#: The key in config.json that marks a checkpoint built here; its value is ``True``.
MARKER_KEY = "vlm_notebook_random_weights"
#: The key in config.json that says what was built: name, Hub id, seed, image splitting.
SOURCE_KEY = "vlm_notebook_random_source"
_FORMAT = 1  # bump when the files written here change in a way that needs a rebuild


@dataclass(frozen=True)
class PublishedShape:
    """What a published checkpoint looks like: sizes, processor settings, special-token ids."""

    hub_id: str
    params: int  # parameters of the published shape, checked after building
    text_config: Mapping[str, Any]
    vision_config: Mapping[str, Any]
    scale_factor: int
    image_seq_len: int  # image tokens per tile
    longest_edge: int  # image processor ``size``: pictures are resized to this before splitting
    tile_edge: int  # image processor ``max_image_size``: the edge of one tile
    special_ids: Mapping[str, int] = field(default_factory=dict)


def _smolvlm_special_ids() -> dict[str, int]:
    """The ids of SmolVLM's special tokens in the published 49280-token vocabulary."""
    ids = {UNK: 0, BOS: 1, PAD: 2, GLOBAL_IMAGE: 49152}
    ids.update({token: 49153 + i for i, token in enumerate(ROW_COL_TOKENS)})  # row-major, 1..6 x 1..6
    ids.update({FAKE_IMAGE: 49189, IMAGE: 49190})
    ids.update({f"<|reserved_special_token_{i}|>": 49191 + i for i in range(88)})
    ids[EOS] = 49279
    return ids


_SIGLIP_B16_512 = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "image_size": 512,
    "patch_size": 16,
}

PUBLISHED: dict[str, PublishedShape] = {
    "smolvlm-256m": PublishedShape(
        hub_id="HuggingFaceTB/SmolVLM-256M-Instruct",
        params=256_484_928,  # 256.5M
        text_config={
            "model_type": "llama",
            "hidden_size": 576,
            "intermediate_size": 1536,
            "num_hidden_layers": 30,
            "num_attention_heads": 9,
            "num_key_value_heads": 3,
            "head_dim": 64,
            "vocab_size": 49280,
            "max_position_embeddings": 8192,
            "rope_theta": 100000.0,
            "rms_norm_eps": 1e-5,
            "tie_word_embeddings": False,
        },
        vision_config=_SIGLIP_B16_512,
        scale_factor=4,
        image_seq_len=64,  # (512 / 16)^2 / 4^2
        longest_edge=4 * 512,
        tile_edge=512,
        special_ids=_smolvlm_special_ids(),
    ),
}

#: Words made single tokens by merges: the chat template's and the default prompt's ("Ġ" is a space).
_WORDS = ("User", "Assistant", "Describe", "Ġthis", "Ġimage")


def published_shape(name: str) -> PublishedShape:
    """The shape called ``name`` (a key of ``PUBLISHED``)."""
    try:
        return PUBLISHED[name]
    except KeyError:
        raise ValueError(f"No published shape {name!r}; known: {', '.join(sorted(PUBLISHED))}.") from None


def default_cache_dir() -> Path:
    """Where ``random_checkpoint`` keeps its directories: ``~/.cache/vlm-notebook/random``."""
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "vlm-notebook" / "random"


def random_checkpoint(
    name: str, *, seed: int = 0, image_splitting: bool = True, cache_dir: Path | None = None
) -> Path:
    """A random checkpoint of ``name`` under ``cache_dir``, built on first use, reused afterwards.

    The splitting-on and splitting-off directories share one weights file (a hard link when the
    file system allows it), so the second variant costs only its processor files.
    """
    root = cache_dir if cache_dir is not None else default_cache_dir()
    directory = root / _directory_name(name, seed, image_splitting)
    sibling = root / _directory_name(name, seed, not image_splitting)
    weights_from = sibling if _read_source(sibling) is not None else None
    return build_random_checkpoint(
        name, directory, seed=seed, image_splitting=image_splitting, weights_from=weights_from
    )


def build_random_checkpoint(
    name: str,
    directory: Path,
    *,
    seed: int = 0,
    image_splitting: bool = True,
    weights_from: Path | None = None,
) -> Path:
    """Write a loadable random-weight checkpoint of the published model ``name`` to ``directory``.

    If ``directory`` already holds this very checkpoint (same name, seed and image splitting), it
    is returned as it is; any other non-empty ``directory`` is an error. ``weights_from`` may name
    another checkpoint built here with the same name and seed: its weights file is linked instead
    of building new weights. The directory appears complete or not at all (files are written to
    a staging directory, then renamed).
    """
    shape = published_shape(name)
    directory = Path(directory).expanduser()
    source = _source_record(name, shape, seed, image_splitting)
    if directory.exists() and not _is_empty_directory(directory):
        _check_existing(directory, source)
        return directory
    if weights_from is not None:
        weights_from = Path(weights_from).expanduser()
        _check_weights_source(weights_from, source)
    return _build_atomically(directory, shape, source, weights_from)


def _build_atomically(
    directory: Path, shape: PublishedShape, source: Mapping[str, Any], weights_from: Path | None
) -> Path:
    """Write into a staging directory next to ``directory``, then rename it into place."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = directory.parent / f".{directory.name}.building-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        _write_checkpoint(staging, shape, source, weights_from)
        if _is_empty_directory(directory):
            directory.rmdir()
        staging.rename(directory)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if _read_source(directory) == dict(source):  # another process finished the same build first
            return directory
        raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


def build_processor(shape: PublishedShape, *, image_splitting: bool = True) -> Idefics3Processor:
    """The real ``Idefics3Processor`` at the published settings, with the stand-in tokenizer."""
    image_processor = Idefics3ImageProcessorPil(
        do_image_splitting=image_splitting,
        size={"longest_edge": shape.longest_edge},
        max_image_size={"longest_edge": shape.tile_edge},
    )
    return Idefics3Processor(
        image_processor=image_processor,
        tokenizer=build_tokenizer(shape),
        image_seq_len=shape.image_seq_len,
        chat_template=CHAT_TEMPLATE,
    )


def build_tokenizer(shape: PublishedShape) -> PreTrainedTokenizerFast:
    """A byte-level BPE that fills the published vocabulary, with the published special-token ids."""
    size = int(shape.text_config["vocab_size"])
    backend = Tokenizer(models.BPE(vocab=_vocabulary(shape.special_ids, size), merges=_merges()))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in shape.special_ids])
    named = {UNK, BOS, PAD, EOS}
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        extra_special_tokens=[t for t in shape.special_ids if t not in named],
        model_max_length=int(shape.text_config["max_position_embeddings"]),
    )


def _vocabulary(special_ids: Mapping[str, int], size: int) -> dict[str, int]:
    """Special tokens at their ids; the other ids in order: byte symbols, word pieces, fillers."""
    vocab = dict(special_ids)
    taken = set(special_ids.values())
    free = (i for i in range(size) if i not in taken)
    for token, index in zip(_ordinary_tokens(), free, strict=False):
        vocab.setdefault(token, index)
    if len(vocab) != size:
        raise RuntimeError(f"stand-in vocabulary has {len(vocab)} tokens, not {size}")
    return vocab


def _ordinary_tokens() -> Iterator[str]:
    """Byte symbols, prefixes of ``_WORDS``, then printable pairs and triples (never a repeat)."""
    seen: set[str] = set()
    printable = [chr(b) for b in range(0x21, 0x7F)] + ["Ġ"]  # "Ġ" is the byte-level space
    prefixes = (word[:k] for word in _WORDS for k in range(2, len(word) + 1))
    fillers = ("".join(t) for n in (2, 3) for t in itertools.product(printable, repeat=n))
    for token in itertools.chain(sorted(pre_tokenizers.ByteLevel.alphabet()), prefixes, fillers):
        if token not in seen:
            seen.add(token)
            yield token


def _merges() -> list[tuple[str, str]]:
    """Merges that build each of ``_WORDS`` one character at a time."""
    pairs = ((word[: k - 1], word[k - 1]) for word in _WORDS for k in range(2, len(word) + 1))
    return list(dict.fromkeys(pairs))


def build_config(shape: PublishedShape, source: Mapping[str, Any]) -> Any:
    """The ``Idefics3Config`` of ``shape``, carrying the random-weights marker and ``source``."""
    ids = shape.special_ids
    text = {**shape.text_config, "bos_token_id": ids[BOS], "eos_token_id": ids[EOS], "pad_token_id": ids[PAD]}
    config = AutoConfig.for_model(
        "idefics3",
        text_config=text,
        vision_config=dict(shape.vision_config),
        scale_factor=shape.scale_factor,
        image_token_id=ids[IMAGE],
        pad_token_id=ids[PAD],
        tie_word_embeddings=bool(shape.text_config.get("tie_word_embeddings", False)),
        **{MARKER_KEY: True, SOURCE_KEY: dict(source)},
    )
    config.architectures = ["Idefics3ForConditionalGeneration"]
    return config


def _generation_config(shape: PublishedShape) -> GenerationConfig:
    ids = shape.special_ids
    return GenerationConfig(bos_token_id=ids[BOS], eos_token_id=ids[EOS], pad_token_id=ids[PAD])


def _random_model(config: Any, seed: int) -> PreTrainedModel:
    """Random fp32 weights, the same for the same seed (torch's global generator is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    return cast(PreTrainedModel, model)


def _write_checkpoint(
    staging: Path, shape: PublishedShape, source: Mapping[str, Any], weights_from: Path | None
) -> None:
    staging.mkdir(parents=True)
    if weights_from is None:
        model = _random_model(build_config(shape, source), int(source["seed"]))
        count = sum(p.numel() for p in model.parameters())
        if count != shape.params:
            raise RuntimeError(f"{source['name']}: built {count:,} parameters, published {shape.params:,}")
        model.generation_config = _generation_config(shape)
        with _no_progress_bars():
            model.save_pretrained(staging)
        del model
    else:
        _copy_config(weights_from, staging, source)
        shutil.copy2(weights_from / "generation_config.json", staging)
        _link_weights(weights_from, staging)
    build_processor(shape, image_splitting=bool(source["image_splitting"])).save_pretrained(staging)
    (staging / "README.md").write_text(_readme(shape, source))


def _copy_config(source: Path, target: Path, record: Mapping[str, Any]) -> None:
    """The config.json of ``source`` with ``record`` as its source record."""
    config = json.loads((source / "config.json").read_text())
    config[SOURCE_KEY] = dict(record)
    (target / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _link_weights(source: Path, target: Path) -> None:
    """Hard-link (else symlink, else copy) the weight files of ``source`` into ``target``."""
    files = sorted(source.glob("*.safetensors")) + sorted(source.glob("*.safetensors.index.json"))
    for file in files:
        destination = target / file.name
        try:
            os.link(file, destination)
        except OSError:
            try:
                destination.symlink_to(file.resolve())
            except OSError:
                shutil.copy2(file, destination)


def _source_record(name: str, shape: PublishedShape, seed: int, image_splitting: bool) -> dict[str, Any]:
    return {
        "name": name,
        "hub_id": shape.hub_id,
        "seed": seed,
        "image_splitting": image_splitting,
        "format": _FORMAT,
    }


def _read_source(directory: Path) -> dict[str, Any] | None:
    """The record a checkpoint built here keeps in its config.json; None for anything else."""
    try:
        config = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict) or config.get(MARKER_KEY) is not True:
        return None
    source = config.get(SOURCE_KEY)
    return source if isinstance(source, dict) else None


def _is_empty_directory(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def _check_existing(directory: Path, wanted: Mapping[str, Any]) -> None:
    found = _read_source(directory)
    if found is None:
        raise FileExistsError(f"{str(directory)!r} exists and is not a random checkpoint built by vlm-notebook.")
    if found != dict(wanted):
        raise FileExistsError(
            f"{str(directory)!r} holds another random checkpoint ({found}), not {dict(wanted)}: "
            "choose another directory or delete it."
        )
    if not any(directory.glob("*.safetensors")):
        raise FileExistsError(f"{str(directory)!r} has no weights file: delete it and build again.")


def _check_weights_source(weights_from: Path, wanted: Mapping[str, Any]) -> None:
    found = _read_source(weights_from)
    same = found is not None and all(found.get(k) == wanted[k] for k in ("name", "seed", "format"))
    if not same:
        raise ValueError(
            f"{str(weights_from)!r} is not a random {wanted['name']} checkpoint with seed {wanted['seed']}: "
            "its weights cannot be reused."
        )


def _directory_name(name: str, seed: int, image_splitting: bool) -> str:
    return f"{name}-seed{seed}-{'split' if image_splitting else 'nosplit'}"


def _readme(shape: PublishedShape, source: Mapping[str, Any]) -> str:
    splitting = "on (model-card default)" if source["image_splitting"] else "off (one tile per picture)"
    return f"""# RANDOM WEIGHTS — not {shape.hub_id}

This directory was written by `vlm_notebook.random_checkpoints.build_random_checkpoint`.
It has the architecture, sizes and processor settings of
[{shape.hub_id}](https://huggingface.co/{shape.hub_id}) but **random weights** (seed {source["seed"]})
and a stand-in tokenizer. **The text it generates is meaningless; only its times and memory count.**

- parameters: {shape.params:,} (fp32)
- image processor: `size.longest_edge` {shape.longest_edge}, tile {shape.tile_edge} px,
  image splitting {splitting}; {shape.image_seq_len} image tokens per tile
- tokenizer: byte-level BPE filling the published vocabulary
  ({shape.text_config["vocab_size"]} ids) with SmolVLM's special tokens at their published ids;
  not the published tokenizer, so text prompts may count a few tokens more or fewer
- `config.json` carries `"{MARKER_KEY}": true` and `"{SOURCE_KEY}"`
"""
