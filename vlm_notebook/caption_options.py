"""The options each family's ``caption`` takes, declared once as data (no torch).

The command line and the magics build their flags from these (:func:`flag`), the widgets their
controls, and a family's ``caption_options`` names its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .languages import CAPTION_PROMPTS, caption_prompt


@dataclass(frozen=True)
class CaptionOption:
    """One option of ``caption``: its name, what it does, and its choices and default if it has them."""

    name: str
    help: str
    choices: tuple[str, ...] | None = None
    default: str | None = None
    #: The family's own check of a value (raises its RequestError), so front ends refuse as it does.
    check: Callable[[Any], object] | None = None


PROMPT = CaptionOption("prompt", "what to ask for instead of the family's caption prompt")
LANGUAGE = CaptionOption("language", "the language to caption in", tuple(CAPTION_PROMPTS), "en", caption_prompt)
CAPTION_LENGTHS: tuple[str, ...] = ("short", "normal", "long")  # Moondream's
LENGTH = CaptionOption("length", "how long a caption", CAPTION_LENGTHS, "normal")

#: Every caption option, and the families that take each one.
BY_FAMILY: dict[str, tuple[CaptionOption, ...]] = {
    "smolvlm": (PROMPT,),
    "qwen2vl": (LANGUAGE,),
    "moondream": (LENGTH,),
    "remote": (PROMPT, LANGUAGE),
    "transformers": (PROMPT,),
}
ALL: tuple[CaptionOption, ...] = (PROMPT, LANGUAGE, LENGTH)
BY_NAME: dict[str, CaptionOption] = {option.name: option for option in ALL}
FAMILY_TITLES = {
    "smolvlm": "SmolVLM", "qwen2vl": "Qwen2-VL", "moondream": "Moondream", "remote": "remote",
    "transformers": "any transformers checkpoint",
}


def names(family: str) -> tuple[str, ...]:
    """The caption option names of ``family``."""
    return tuple(option.name for option in BY_FAMILY[family])


def families_taking(option: CaptionOption) -> list[str]:
    """The families whose caption takes ``option``, by title (for help texts)."""
    return [FAMILY_TITLES[family] for family, options in BY_FAMILY.items() if option in options]


def flag(option: CaptionOption) -> tuple[str, dict[str, Any]]:
    """``option`` as a flag: its name and its argparse settings (for the command line and the magics)."""
    families = ", ".join(families_taking(option))
    default = f"default {option.default}" if option.default else "default: the family's"
    return f"--{option.name}", {"choices": option.choices, "help": f"{option.help} ({families}; {default})"}
