"""Families built on transformers' image-text-to-text models (SmolVLM, Qwen2-VL).

Loading resolves a Hub id to a local snapshot first (the cache, or a download when online),
so shipped checkpoints, user directories and Hub checkpoints all load through the same
``from_pretrained(directory)`` path.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import torch
from PIL import Image
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    GenerationConfig,
    PreTrainedModel,
    StoppingCriteria,
    StoppingCriteriaList,
)
from transformers.generation.streamers import BaseStreamer
from transformers.utils import logging as transformers_logging

from .. import registry
from ..decoding import ChunkDecoder, decode_text
from ..errors import CheckpointError
from ..hub import checkpoint_directory
from ..options import GenerationOptions
from ..stream import TokenSink
from .base import VLM


class TransformersVLM(VLM):
    """A family whose checkpoints load with ``AutoProcessor`` and ``AutoModelForImageTextToText``."""

    image_token: ClassVar[str] = "<image>"

    processor: Any
    model: PreTrainedModel

    def _load(self) -> None:
        directory = checkpoint_directory(self.entry.source, self.revision, shipped=self.entry.shipped)
        family = registry.family_of_directory(directory)
        if family != self.family:
            raise CheckpointError(f"{str(directory)!r} holds a {family} checkpoint, not a {self.family} one.")
        processor = _load_part("processor", directory, self._load_processor)
        model = _load_part("weights", directory, _load_weights)
        self.processor, self.model = processor, model
        self._tokenizer = processor.tokenizer.backend_tokenizer
        self._image_token_id = processor.tokenizer.convert_tokens_to_ids(self.image_token)

    def _load_processor(self, directory: Path) -> Any:
        return AutoProcessor.from_pretrained(directory)

    def _messages(self, prompt: str) -> list[dict[str, Any]]:
        return chat_messages(prompt)

    def _inputs(self, picture: Image.Image, prompt: str) -> Any:
        text = self.processor.apply_chat_template(self._messages(prompt), add_generation_prompt=True)
        return self.processor(text=text, images=[picture], return_tensors="pt")

    def _generate(
        self, picture: Image.Image, prompt: str, options: GenerationOptions, sink: TokenSink | None
    ) -> list[int]:
        inputs = self._inputs(picture, prompt)
        prompt_ids = inputs["input_ids"]
        if sink is not None:
            image_tokens = int((prompt_ids == self._image_token_id).sum())
            sink.set_prompt(prompt_ids.shape[1], image_tokens)
        config = self._generation_config(options)
        with torch.inference_mode(), _seeded(options.seed), _interruptible(self.model, sink):
            output = self.model.generate(
                **inputs,
                generation_config=config,
                streamer=_SinkStreamer(sink, ChunkDecoder(self._tokenizer)) if sink else None,
                stopping_criteria=StoppingCriteriaList([_CancelCriterion(sink)]) if sink else None,
            )
        token_ids: list[int] = output[0, prompt_ids.shape[1]:].tolist()
        if sink is not None:
            sink.set_finish_reason(_finish_reason(token_ids, config))
        return token_ids

    def _generation_config(self, options: GenerationOptions) -> GenerationConfig:
        defaults = self.model.generation_config
        sampling: dict[str, Any] = {}
        if not options.greedy:
            sampling = {"temperature": options.temperature, "top_p": options.top_p, "top_k": None}
        return GenerationConfig(
            max_new_tokens=options.max_new_tokens,
            do_sample=not options.greedy,
            eos_token_id=defaults.eos_token_id,
            pad_token_id=defaults.pad_token_id if defaults.pad_token_id is not None else defaults.eos_token_id,
            bos_token_id=defaults.bos_token_id,
            **sampling,
        )

    def _decode(self, token_ids: Sequence[int]) -> str:
        return decode_text(self._tokenizer, token_ids)


def chat_messages(prompt: str) -> list[dict[str, Any]]:
    """A fresh one-turn chat, one picture then ``prompt`` (apply_chat_template mutates what it is given)."""
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]


def _load_weights(directory: Path) -> PreTrainedModel:
    with _no_progress_bars():  # a bar per load clutters notebook cells
        model: PreTrainedModel = AutoModelForImageTextToText.from_pretrained(directory, dtype=torch.float32)
    return model.eval()


@contextmanager
def _no_progress_bars() -> Iterator[None]:
    was_enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            transformers_logging.enable_progress_bar()


def _load_part(part: str, directory: Path, load: Any) -> Any:
    """Run a transformers loader; turn its failures into a CheckpointError that names the directory."""
    try:
        return load(directory)
    except CheckpointError:
        raise
    except ImportError as error:
        raise CheckpointError(f"Loading the {part} of {str(directory)!r} needs a package: {error}") from error
    except Exception as error:  # transformers, safetensors and tokenizers raise many kinds
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(
            f"Cannot load the {part} of the checkpoint in {str(directory)!r}: {first_line}. "
            "Check that the directory is a complete, uncorrupted checkpoint (download it again if needed)."
        ) from error


def _finish_reason(token_ids: list[int], config: GenerationConfig) -> str:
    eos = config.eos_token_id
    eos_ids = set(eos) if isinstance(eos, list) else {eos}
    if token_ids and token_ids[-1] in eos_ids:
        return "stop"
    return "length" if len(token_ids) >= (config.max_new_tokens or 0) else "stop"


class _SinkStreamer(BaseStreamer):  # type: ignore[misc]
    """Receives tokens from ``generate`` (after the prompt) and hands their text to the sink."""

    def __init__(self, sink: TokenSink, decoder: ChunkDecoder):
        self._sink = sink
        self._decoder = decoder
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # generate first hands over the prompt
            self._prompt_seen = True
            return
        for token_id in value.reshape(-1).tolist():
            self._sink.put_token(self._decoder.step(token_id))

    def end(self) -> None:
        pass


class _CancelCriterion(StoppingCriteria):  # type: ignore[misc]
    """Stops ``generate`` after the current token once the stream is cancelled."""

    def __init__(self, sink: TokenSink):
        self._sink = sink

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        stop = torch.full((input_ids.shape[0],), self._sink.cancelled, dtype=torch.bool)
        return stop  # type: ignore[return-value]


@contextmanager
def _interruptible(model: torch.nn.Module, sink: TokenSink | None) -> Iterator[None]:
    """Let a cancel stop a long prefill between two layers, not only between tokens."""
    if sink is None:
        yield
        return

    def check(module: torch.nn.Module, args: Any) -> None:
        sink.raise_if_cancelled()

    layers = [layer for block in model.modules() if isinstance(block, torch.nn.ModuleList) for layer in block]
    handles = [layer.register_forward_pre_hook(check) for layer in layers]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def _seeded(seed: int | None) -> Iterator[None]:
    """Seed torch's generator for one sampled generation (runs under the model's lock)."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        yield
