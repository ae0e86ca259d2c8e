"""Caption prompts written in each language a caption can be asked for (no torch: remote models use it too)."""

from __future__ import annotations

from .errors import RequestError

#: The caption prompt for each language, written in that language.
CAPTION_PROMPTS: dict[str, str] = {
    "en": "Describe this image.",
    "ja": "この画像を説明してください。",
    "zh": "请描述这张图片。",
    "ko": "이 이미지를 설명해 주세요.",
    "fr": "Décrivez cette image.",
    "de": "Beschreibe dieses Bild.",
    "es": "Describe esta imagen.",
}


def caption_prompt(language: str) -> str:
    """The caption prompt written in ``language``; an unknown code is refused with the known ones."""
    prompt = CAPTION_PROMPTS.get(language) if isinstance(language, str) else None
    if prompt is None:
        raise RequestError(f"Unknown caption language {language!r}; known languages: {', '.join(CAPTION_PROMPTS)}.")
    return prompt
