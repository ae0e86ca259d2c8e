"""Families built on transformers' image-text-to-text models (SmolVLM, Qwen2-VL).

Loading resolves a Hub id to a local snapshot first (the cache, or a download when online),
so shipped checkpoints, user directories and Hub checkpoints all load through the same
``from_pretrained(directory)`` path.
"""

from __future__ import annotations

import logging as stdlib_logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
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

from .. import engine, registry
from ..cache import PrefixCache, PrefixEntry, image_digest
from ..cpu import DecodeChoice
from ..detokenizer import Detokenizer
from ..engine import finish_reason, stop_ids
from ..errors import CheckpointError, RequestError, VLMError
from ..hub import checkpoint_directory
from ..options import GenerationOptions, fit_to_context, refuse_special_tokens
from ..request import Request
from ..runtime import Runtime, check_fits, choose_runtime, fit_weights, float32_if_not_finite
from ..stream import TokenSink
from . import _conversation
from ._prefix import SplitPrompt, WholePrompt, continuation_inputs, encode_prefix, split_prompt, vision_module
from .attention import attend_with_it, attends_through_it
from .base import VLM
from .idefics3_pixels import pixels_by_table
from .llama_step import LlamaStep, step_for

#: ``defaults=`` values: "cpu" (the project's CPU policy) or "card" (the model card's settings).
DEFAULTS = ("cpu", "card")


#: Makes a family's own decoding step from transformers' cache after the prompt, the tokens it must
#: hold and the offset of its rotary positions from its cache positions.
StepMaker = Callable[[Any, int, int], LlamaStep]

#: The prompt of the first-logits check of a half-precision load (on a blank picture).
PROBE_PROMPT = "Describe this image."

class TransformersVLM(VLM):
    """A family whose checkpoints load with ``AutoProcessor`` and ``AutoModelForImageTextToText``."""

    image_token: ClassVar[str] = "<image>"
    multi_turn: ClassVar[bool] = True

    processor: Any
    model: PreTrainedModel

    def __init__(
        self,
        model: str | None = None,
        *,
        revision: str | None = None,
        defaults: str = "cpu",
        int8: bool = False,
        device: str = "auto",
        dtype: str = "auto",
    ):
        """``defaults="cpu"`` sizes pictures for a CPU (see the family); ``"card"`` keeps the model card's.

        ``device`` and ``dtype`` choose where and in what number format it runs (``vlm_notebook.runtime``;
        "auto" by default). ``int8=True`` (CPU only) quantizes every linear layer to int8 on load:
        faster on a CPU, but the answers may differ from the fp32 model's (so it is off by default).
        """
        if defaults not in DEFAULTS:
            raise RequestError(f"defaults must be one of {', '.join(map(repr, DEFAULTS))}, got {defaults!r}.")
        runtime = choose_runtime(device, dtype, int8)
        super().__init__(model, revision=revision)
        self.runtime: Runtime = runtime
        self.defaults = defaults
        self.int8 = int8
        #: The work done for recent pictures (bounded; ``image_cache.clear()`` empties it).
        self.image_cache: PrefixCache[PrefixEntry] = PrefixCache()
        self._decode_threads = DecodeChoice()

    def _load(self) -> None:
        directory = checkpoint_directory(self.entry.source, self.revision, shipped=self.entry.shipped)
        family = registry.family_of_directory(directory)
        if family != self.family:
            raise CheckpointError(f"{str(directory)!r} holds a {family} checkpoint, not a {self.family} one.")
        processor = _load_part("processor", directory, self._load_processor)
        if not getattr(processor, "chat_template", None):  # else every request would fail after loading
            raise CheckpointError(
                f"The checkpoint in {str(directory)!r} has no chat template (chat_template.jinja): "
                "it is incomplete. Download the checkpoint again."
            )
        pixels_by_table(getattr(processor, "image_processor", None))
        model = _load_part("weights", directory, partial(_load_weights, runtime=self.runtime))
        self.processor, self.model = processor, model
        self._tokenizer = processor.tokenizer.backend_tokenizer
        self._image_token_id = processor.tokenizer.convert_tokens_to_ids(self._image_placeholder())
        self._special_tokens = [t.content for t in processor.tokenizer.added_tokens_decoder.values() if t.special]
        self._context_tokens: int | None = getattr(model.config.get_text_config(), "max_position_embeddings", None)

    def _check_request(self, request: Request) -> None:
        refuse_special_tokens(request.text(self.default_prompt), self._special_tokens)

    def _check_number_format(self) -> None:
        if not self.runtime.half_by_auto:
            return
        logits = self._first_logits(Image.new("RGB", (64, 64), "white"), PROBE_PROMPT)
        self.runtime = float32_if_not_finite(self.runtime, self.model, logits, repr(self.name))

    def _first_logits(self, picture: Image.Image, question: str) -> torch.Tensor:
        """The logits of the first answer token to ``question`` about ``picture`` (one forward pass,
        nothing reused or kept): the number format's effect, seen before any token is picked."""
        with torch.inference_mode():
            logits: torch.Tensor = self.model(**self._inputs(picture, question)).logits[0, -1]
        self._forget_position_state()
        return logits

    def _load_processor(self, directory: Path) -> Any:
        return AutoProcessor.from_pretrained(directory)

    def _image_placeholder(self) -> str:
        """What stands for the picture in the chat prompt, before the processor expands it (the
        family's ``image_token``; the generic family reads it from the loaded processor)."""
        return self.image_token

    def _processor_kwargs(self) -> dict[str, Any]:
        """Image settings handed to the processor with every picture (default: the checkpoint's)."""
        return {}

    def _chat_text(self, prompt: str) -> str:
        text: str = self.processor.apply_chat_template(chat_messages(prompt), add_generation_prompt=True)
        return text

    def _inputs(self, picture: Image.Image, prompt: str) -> Any:
        """The whole prompt through the processor, as the model card does it."""
        return self._text_inputs(picture, self._chat_text(prompt))

    def _text_inputs(self, picture: Image.Image, text: str) -> Any:
        """A chat-formatted ``text`` with its one picture through the processor."""
        inputs = self.processor(text=text, images=[picture], return_tensors="pt", **self._processor_kwargs())
        return self.runtime.place(inputs)

    def _answer(self, request: Request, sink: TokenSink) -> None:
        """The conversation through the chat template; a chat's turns continue from its KV cache."""
        text: str = self.processor.apply_chat_template(
            request.template_messages(self.default_prompt), add_generation_prompt=True
        )
        self._generate_text(request.picture, text, request.options, sink, request.memory)

    def _generate_text(
        self, picture: Image.Image, text: str, options: GenerationOptions, sink: TokenSink | None,
        conversation: dict[str, Any] | None = None,
    ) -> list[int]:
        """Generate after the chat-formatted ``text``; ``conversation`` (a chat's memory) lends its KV cache.
        Returns the answer's token ids."""
        split = split_prompt(text, self._image_placeholder())
        with (
            torch.inference_mode(), _seeded(options.generator_seed, self.runtime), _interruptible(self.model, sink),
            self.runtime.phases(self.model, self._decode_threads) as to_decoding,
        ):
            own_step = self._own_step()
            first_logits: torch.Tensor | None = None  # set when the cache already holds the whole prompt
            if split is None:  # a chat template without exactly one picture slot: no reuse
                inputs, cache = self._text_inputs(picture, text), None
            else:
                in_one_pass = own_step is not None and conversation is None and attends_through_it(self.model)
                inputs, cache, first_logits = self._continuation(picture, split, sink, in_one_pass)
            prompt_ids = inputs["input_ids"]
            if conversation is not None:
                cache = _conversation.resume(conversation, prompt_ids, cache, self._context_tokens, sink)
            if sink is not None:
                sink.set_prompt(prompt_ids.shape[1], int((prompt_ids == self._image_token_id).sum()))
            options = fit_to_context(options, prompt_ids.shape[1], self._context_tokens)
            config = self._generation_config(options)
            words_left = cache is not None and cache.get_seq_length() < prompt_ids.shape[1]
            if own_step is not None and cache is not None and (first_logits is not None or words_left):
                token_ids = self._decode_here(
                    inputs, cache, own_step, options, config, sink, to_decoding, keep_cache=conversation is not None,
                    first_logits=first_logits,
                )
            else:
                token_ids = self._generate_ids(inputs, cache, config, sink)
        if conversation is not None:
            _conversation.keep(conversation, prompt_ids, token_ids, cache)
        return token_ids

    def _own_step(self) -> StepMaker | None:
        """How this family decodes one token without ``generate``, if it can: over the text model
        ``_decoding_text_model`` finds, :class:`LlamaStep` (on CUDA, its graphed form). Called with
        transformers' cache after the prompt, the tokens it must hold and the rotary position
        offset (``_prompt_positions``); the step it makes feeds one token and returns the next logits."""
        text_model = self._decoding_text_model()
        return None if text_model is None else step_for(text_model, self.model.lm_head, self.runtime.device)

    def _decoding_text_model(self) -> torch.nn.Module | None:
        """The text model :class:`LlamaStep` can run (default: none; SmolVLM's and Qwen2-VL's)."""
        return None

    def _prompt_positions(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor | None, int]:
        """The prompt's position ids where the family numbers positions its own way (None: the
        model counts them), and how far the answer's rotary positions are from its cache positions."""
        return None, 0

    def _generate_ids(
        self, inputs: dict[str, torch.Tensor], cache: Any, config: GenerationConfig, sink: TokenSink | None
    ) -> list[int]:
        """``generate`` after the prompt (prefilling what ``cache`` lacks of it); the new token ids."""
        output = self.model.generate(
            **inputs,
            cache=cache,
            generation_config=config,
            streamer=_SinkStreamer(sink, Detokenizer(self._tokenizer)) if sink else None,
            stopping_criteria=StoppingCriteriaList([_CancelCriterion(sink)]) if sink else None,
        )
        token_ids: list[int] = output[0, inputs["input_ids"].shape[1]:].tolist()
        reason = finish_reason(token_ids, stop_ids(config.eos_token_id), config.max_new_tokens or 0)
        if sink is not None:  # short of its length, generate stopped on a stop id or for a cancel
            sink.set_finish_reason(reason or "stop")
        return token_ids

    def _decode_here(
        self,
        inputs: dict[str, torch.Tensor],
        cache: Any,
        own_step: StepMaker,
        options: GenerationOptions,
        config: GenerationConfig,
        sink: TokenSink | None,
        to_decoding: Callable[[], None],
        keep_cache: bool = False,
        first_logits: torch.Tensor | None = None,
    ) -> list[int]:
        """Prefill the words after the cached prefix (unless ``first_logits`` are given: ``cache``
        then holds the whole prompt already), then decode through the engine with the family's own
        step (same layers, same greedy tokens as ``generate``, less work per token). With
        ``keep_cache`` (a conversation's turn), ``cache`` then holds the answer's tokens too."""
        prompt_ids, cached = inputs["input_ids"], cache.get_seq_length()
        positions, offset = self._prompt_positions(inputs)
        if first_logits is None:
            started = time.perf_counter()
            placed = {} if positions is None else {"position_ids": positions[..., cached:]}
            output = self.model(
                input_ids=prompt_ids[:, cached:], cache=cache, use_cache=True, logits_to_keep=1, **placed
            )
            if sink is not None:
                sink.add_prefill_time(time.perf_counter() - started)
            cache, first_logits = output.cache, output.logits[:, -1]
        step = own_step(cache, prompt_ids.shape[1] + options.max_new_tokens, offset)
        token_ids = engine.generate(
            first_logits, step, options, stop_ids(config.eos_token_id), sink, Detokenizer(self._tokenizer),
            before_step=to_decoding,
        )
        if keep_cache:
            step.extend(cache)
        return token_ids

    def _continuation(
        self, picture: Image.Image, split: SplitPrompt, sink: TokenSink | None, in_one_pass: bool = False
    ) -> tuple[dict[str, torch.Tensor], Any, torch.Tensor | None]:
        """Inputs for the whole prompt without pixels, and a private copy of the prefix's KV cache
        (then None); or, ``in_one_pass`` on a cache miss, the whole prompt's cache and the next
        token's logits."""
        suffix = self.processor.tokenizer(split.after, add_special_tokens=False, return_tensors="pt")["input_ids"]
        suffix = suffix.to(self.runtime.device)
        entry, hit, whole = self._image_work(picture, split.before, suffix if in_one_pass else None)
        if sink is not None:
            vision, prefill = (0.0, 0.0) if hit else (entry.vision_seconds, entry.prefill_seconds)
            sink.set_image_work(cache_hit=hit, tiles=entry.tiles, vision_seconds=vision, prefill_seconds=prefill)
        self._forget_position_state()
        inputs = continuation_inputs(entry, suffix)
        return (inputs, whole.cache, whole.logits) if whole is not None else (inputs, entry.fresh_cache(), None)

    def _image_work(
        self, picture: Image.Image, before: str, suffix: torch.Tensor | None = None
    ) -> tuple[PrefixEntry, bool, WholePrompt | None]:
        """The prefix entry for ``picture`` (from the store, or computed and stored); whether it was
        stored; on a miss with ``suffix`` (the question's ids), the whole prompt's pass."""
        kwargs = self._processor_kwargs()
        key = (image_digest(picture), before, repr(sorted(kwargs.items())))
        entry = self.image_cache.get(key)
        if entry is not None:
            return entry, True, None
        prefix = before + self._image_placeholder()
        entry, whole = encode_prefix(self.model, self.processor, picture, prefix, kwargs, self.runtime, suffix)
        self.image_cache.put(key, entry)
        return entry, False, whole

    def _prepare(self, picture: Image.Image) -> None:
        split = split_prompt(self._chat_text("?"), self._image_placeholder())
        if split is not None:
            with torch.inference_mode(), self.runtime.phases(self.model):
                self._image_work(picture, split.before)

    def _forget_position_state(self) -> None:
        """Drop position offsets a model keeps between calls (Qwen2-VL's ``rope_deltas``), so that
        generation derives them from this prompt's ids and image grid, not from the last request."""
        inner = getattr(self.model, "model", None)
        if inner is not None and hasattr(inner, "rope_deltas"):
            inner.rope_deltas = None

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


def chat_messages(prompt: str) -> list[dict[str, Any]]:
    """A fresh one-turn chat, one picture then ``prompt`` (apply_chat_template mutates what it is given)."""
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]


def _load_weights(directory: Path, runtime: Runtime) -> PreTrainedModel:
    check_fits(runtime, directory.glob("*.safetensors"), f"The checkpoint in {str(directory)!r}")
    _quiet_kernel_fallbacks()
    with _no_progress_bars():  # a bar per load clutters notebook cells
        model, info = AutoModelForImageTextToText.from_pretrained(
            directory, dtype=runtime.dtype, output_loading_info=True
        )
    missing = sorted(info["missing_keys"])
    if missing:  # transformers would fill them with random values and load anyway
        raise CheckpointError(
            f"The weights in {str(directory)!r} lack {len(missing)} of the model's tensors (such as {missing[0]!r}): "
            "they are incomplete or belong to another model. Download the checkpoint again."
        )
    loaded: PreTrainedModel = model.to(runtime.device).eval()
    decoding = [part for part in (loaded.get_decoder(), loaded.get_output_embeddings()) if part is not None]
    fit_weights(loaded, runtime, decoding)
    contiguous_vision_embeddings(loaded)
    attend_with_it(loaded, vision_module(loaded))
    return loaded


def contiguous_vision_embeddings(model: torch.nn.Module) -> None:
    """Have the vision encoder's patch embeddings come out contiguous in memory.

    SigLIP-style embeddings (SmolVLM's, and those of many checkpoints of the generic family) return
    the patches as a transposed view, and the encoder keeps that layout to its end: each layer norm
    copies its input first, and each residual add runs strided. One copy at the start gives the same
    numbers with less work (tested); ``benchmarks/results/cpu_vs_openvino.md`` times the encoder.
    """
    embeddings = getattr(vision_module(model), "embeddings", None)
    if isinstance(embeddings, torch.nn.Module):
        embeddings.register_forward_hook(_contiguous_output)


def _contiguous_output(module: torch.nn.Module, args: Any, output: Any) -> Any:
    return output.contiguous() if isinstance(output, torch.Tensor) else None


@contextmanager
def _no_progress_bars() -> Iterator[None]:
    was_enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            transformers_logging.enable_progress_bar()


def _is_not_kernel_fallback(record: stdlib_logging.LogRecord) -> bool:
    return "falling back to its reference PyTorch implementation" not in record.getMessage()


def _quiet_kernel_fallbacks() -> None:
    """Keep transformers' notice that an optional kernel package is missing out of the answers.

    Models with convolution or linear-attention layers (Qwen3.5, LFM2-VL) run those layers in plain
    PyTorch when ``causal-conv1d`` or ``flash-linear-attention`` (CUDA packages) is not installed, and
    transformers says so on the first token, in the middle of a streamed answer. The answers are the
    same either way; the README names the packages for CUDA users. Other warnings still show.
    """
    transformers_logging.get_logger("transformers.integrations.hub_kernels").addFilter(_is_not_kernel_fallback)


def _load_part(part: str, directory: Path, load: Any) -> Any:
    """Run a transformers loader; turn its failures into a CheckpointError that names the directory."""
    try:
        return load(directory)
    except VLMError:  # already says what to do (a damaged checkpoint, a model too large for the GPU)
        raise
    except ImportError as error:
        raise CheckpointError(f"Loading the {part} of {str(directory)!r} needs a package: {error}") from error
    except Exception as error:  # transformers, safetensors and tokenizers raise many kinds
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(
            f"Cannot load the {part} of the checkpoint in {str(directory)!r}: {first_line}. "
            "Check that the directory is a complete, uncorrupted checkpoint (download it again if needed)."
        ) from error


class _SinkStreamer(BaseStreamer):  # type: ignore[misc]
    """Receives tokens from ``generate`` (after the prompt) and hands their text to the sink."""

    def __init__(self, sink: TokenSink, decoder: Detokenizer):
        self._sink = sink
        self._decoder = decoder
        self._prompt_seen = False
        self._prefill_started: float | None = None

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # generate first hands over the prompt, then prefills it
            self._prompt_seen = True
            self._prefill_started = self._sink.elapsed()
            return
        if self._prefill_started is not None:
            self._sink.add_prefill_time(self._sink.elapsed() - self._prefill_started)
            self._prefill_started = None
        for token_id in value.reshape(-1).tolist():
            self._sink.put_token(self._decoder.step(token_id))

    def end(self) -> None:
        pass


class _CancelCriterion(StoppingCriteria):  # type: ignore[misc]
    """Stops ``generate`` after the current token once the stream is cancelled."""

    def __init__(self, sink: TokenSink):
        self._sink = sink

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        stop = torch.full((input_ids.shape[0],), self._sink.cancelled, dtype=torch.bool, device=input_ids.device)
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
def _seeded(seed: int | None, runtime: Runtime) -> Iterator[None]:
    """Seed torch's generators for one sampled generation (runs under the model's lock): ``generate``
    samples with the global generator of the model's device."""
    if seed is None:
        yield
        return
    accelerator = runtime.device.type != "cpu"
    devices = [runtime.device] if accelerator else []
    with torch.random.fork_rng(devices=devices, device_type=runtime.device.type if accelerator else "cuda"):
        torch.manual_seed(seed)
        yield
