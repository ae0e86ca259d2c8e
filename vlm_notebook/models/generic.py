"""Any transformers image-text-to-text checkpoint: the generic family ("transformers").

A checkpoint whose ``config.json`` names a model type that transformers maps to
``AutoModelForImageTextToText`` (Qwen3-VL, Qwen3.5, Gemma 4, LLaVA, ...) loads here with no
per-family code: its own processor, its own chat template applied to one user message holding the
picture then the text (with the generation prompt added), greedy or sampled ``generate``, token
by token. Follow-up questions reuse the picture's work as in the named families; the image
placeholder is the processor's ``image_token``. No code from the Hub is ever run: a checkpoint
that needs its own code is refused.

Processors that also handle video need torchvision for that part only; without torchvision the
same processor class is built from its parts with no video (or audio) part, for pictures.
"""

from __future__ import annotations

import inspect
import json
from functools import cache
from pathlib import Path
from typing import Any

import transformers
from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer, ProcessorMixin
from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

from .. import caption_options
from ..errors import CheckpointError
from .hf import TransformersVLM

#: Processor parts a picture never needs (video frames, audio): left out when they cannot be built.
OPTIONAL_PARTS = ("video_processor", "feature_extractor")
CHAT_TEMPLATE_FILE = "chat_template.jinja"
PROCESSOR_CONFIG_FILE = "processor_config.json"
TORCHVISION_HINT = "install the torchvision build that matches your torch (see https://pytorch.org)"


class TransformersModel(TransformersVLM):
    """Any checkpoint that transformers loads with ``AutoModelForImageTextToText``.

    ``get_model(name_or_directory)`` picks it for every model type without a named family
    (SmolVLM and Qwen2-VL checkpoints keep theirs). Default: ``qwen3.5-0.8b`` from the Hub.
    """

    family = "transformers"
    default_model = "qwen3.5-0.8b"
    caption_options = caption_options.names("transformers")

    def _load_processor(self, directory: Path) -> Any:
        return load_processor(directory)

    def _image_placeholder(self) -> str:
        token = getattr(self.processor, "image_token", None)
        return token if isinstance(token, str) and token else self.image_token


def load_processor(directory: Path) -> Any:
    """The checkpoint's processor: ``AutoProcessor`` when it can build it, else the same processor
    class built from its picture parts (its video part needs torchvision)."""
    try:
        processor = AutoProcessor.from_pretrained(directory)
    except (ImportError, AttributeError, ValueError, TypeError) as error:
        if not _needs_torchvision(error):  # another missing package or a broken checkpoint: say so
            raise
        return load_image_only_processor(directory)
    if not hasattr(processor, "image_processor") or not hasattr(processor, "tokenizer"):
        return load_image_only_processor(directory)
    return processor


def load_image_only_processor(directory: Path) -> Any:
    """The checkpoint's processor class from its image processor (the PIL one), tokenizer, chat
    template and settings, without the parts pictures do not need."""
    processor_class = image_only(_processor_class(directory))
    try:
        image_processor = AutoImageProcessor.from_pretrained(directory)
    except (ImportError, ValueError) as error:
        if not _needs_torchvision(error):
            raise
        raise CheckpointError(
            f"The image processor of {str(directory)!r} has no PIL version: it needs torchvision. "
            f"To load this checkpoint, {TORCHVISION_HINT}."
        ) from None
    parts: dict[str, Any] = {"image_processor": image_processor, "tokenizer": AutoTokenizer.from_pretrained(directory)}
    accepted = inspect.signature(processor_class).parameters
    parts.update({name: None for name in OPTIONAL_PARTS if name in accepted})
    wanted = set(accepted) - {*parts, "chat_template"}
    settings = {key: value for key, value in _processor_settings(directory).items() if key in wanted}
    return processor_class(**parts, **settings, chat_template=_chat_template(directory, parts["tokenizer"]))


@cache
def image_only(processor_class: type) -> type:
    """``processor_class`` for pictures only: its video and audio parts may be None."""
    base: Any = processor_class

    def check_argument_for_proper_class(self: Any, argument_name: str, argument: Any) -> Any:
        if argument is None and argument_name in OPTIONAL_PARTS:
            return None
        return base.check_argument_for_proper_class(self, argument_name, argument)

    def save_pretrained(self: Any, save_directory: str | Path, **kwargs: Any) -> list[str]:
        return save_image_only(self, Path(save_directory), processor_class.__name__)

    methods = {"check_argument_for_proper_class": check_argument_for_proper_class, "save_pretrained": save_pretrained}
    return type(f"ImageOnly{processor_class.__name__}", (processor_class,), methods)


def save_image_only(processor: Any, directory: Path, class_name: str) -> list[str]:
    """Save an image-only processor so that ``AutoProcessor`` (with torchvision) or
    :func:`load_processor` (without) builds it again: its parts, chat template and settings."""
    directory.mkdir(parents=True, exist_ok=True)
    processor.image_processor.save_pretrained(directory)
    processor.tokenizer.save_pretrained(directory)
    if processor.chat_template:
        (directory / CHAT_TEMPLATE_FILE).write_text(processor.chat_template, encoding="utf-8")
    settings = {"processor_class": class_name, **_own_settings(processor)}
    (directory / PROCESSOR_CONFIG_FILE).write_text(json.dumps(settings, indent=2), encoding="utf-8")
    return [str(directory)]


def _own_settings(processor: Any) -> dict[str, Any]:
    """The processor's own JSON-able init arguments (``patch_size``, ``image_seq_length``...)."""
    skip = {"self", "image_processor", "tokenizer", "chat_template", "kwargs", *OPTIONAL_PARTS}
    names = [name for name in inspect.signature(type(processor)).parameters if name not in skip]
    values = {name: getattr(processor, name, None) for name in names}
    return {name: value for name, value in values.items() if isinstance(value, (int, float, str, bool))}


def _processor_class(directory: Path) -> type:
    settings = _processor_settings(directory)
    name = settings.get("processor_class") or PROCESSOR_MAPPING_NAMES.get(_model_type(directory))
    processor_class = getattr(transformers, str(name), None) if name else None
    if not isinstance(processor_class, type) or not issubclass(processor_class, ProcessorMixin):
        raise CheckpointError(
            f"{str(directory)!r} names no processor that transformers has ({name!r}): "
            "it may need code from the Hub, which vlm-notebook never runs."
        )
    return processor_class


def _processor_settings(directory: Path) -> dict[str, Any]:
    path = directory / PROCESSOR_CONFIG_FILE
    settings = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    return settings if isinstance(settings, dict) else {}


def _chat_template(directory: Path, tokenizer: Any) -> str | None:
    """From chat_template.jinja, else chat_template.json (older repositories), else the tokenizer's."""
    path = directory / CHAT_TEMPLATE_FILE
    if path.is_file():
        return path.read_text(encoding="utf-8")
    legacy = directory / "chat_template.json"
    template = json.loads(legacy.read_text(encoding="utf-8")).get("chat_template") if legacy.is_file() else None
    if template is None:
        template = getattr(tokenizer, "chat_template", None)
    return template if isinstance(template, str) else None


def _model_type(directory: Path) -> str:
    model_type = json.loads((directory / "config.json").read_text()).get("model_type")
    return model_type if isinstance(model_type, str) else ""


def _needs_torchvision(error: BaseException) -> bool:
    text = str(error)
    return "torchvision" in text.lower() or "VIDEO_PROCESSOR_MAPPING" in text
