"""Qwen2-VL's processor without its video processor, which needs torchvision.

transformers' ``Qwen2VLProcessor`` insists on a video processor, and the only one it has
imports torchvision. Pictures need only the image processor (the PIL one works without
torchvision) and the tokenizer, so this builds the real processor with no video part.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import AutoTokenizer, Qwen2VLImageProcessorPil, Qwen2VLProcessor

CHAT_TEMPLATE_FILE = "chat_template.jinja"


class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):  # type: ignore[misc]
    """``Qwen2VLProcessor`` for pictures only: ``video_processor`` may be ``None``."""

    def check_argument_for_proper_class(self, argument_name: str, argument: Any) -> Any:
        if argument is None and argument_name == "video_processor":
            return None
        return super().check_argument_for_proper_class(argument_name, argument)

    def save_pretrained(self, save_directory: str | Path, **kwargs: Any) -> list[str]:
        """Save the image processor, the tokenizer and the chat template (no video part)."""
        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.image_processor.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        if self.chat_template:
            (directory / CHAT_TEMPLATE_FILE).write_text(self.chat_template, encoding="utf-8")
        return [str(directory)]


def load_image_only_processor(directory: Path) -> ImageOnlyQwen2VLProcessor:
    """Build the processor of a Qwen2-VL checkpoint directory from its parts.

    The chat template comes from ``chat_template.jinja``, else from the tokenizer's config.
    """
    image_processor = Qwen2VLImageProcessorPil.from_pretrained(directory)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    template_file = directory / CHAT_TEMPLATE_FILE
    template = template_file.read_text(encoding="utf-8") if template_file.is_file() else None
    if template is None:
        template = getattr(tokenizer, "chat_template", None)
    return ImageOnlyQwen2VLProcessor(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=None, chat_template=template
    )
