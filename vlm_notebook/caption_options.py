"""The options each family's ``caption`` takes, declared once as data (no torch).

The command line and the magics build their flags from these (:func:`flag`), the widgets their
controls, and a family's ``caption_options`` names its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import RequestError
from .languages import CAPTION_PROMPTS, caption_prompt
from .options import clean_question


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


def read(owner: str, names: tuple[str, ...], positional: tuple[Any, ...], named: dict[str, Any]) -> dict[str, str]:
    """The caption options given to ``owner.caption`` (a family's class name), by name and checked.

    ``positional`` values take ``names`` in order. An option the family lacks, a value its check
    refuses, or a prompt given with a language is refused with a RequestError. None means "not
    given" for a prompt, and for a language where the family takes a prompt too (the two are
    alternatives there); a family whose only option is a language refuses None as a language.
    """
    if len(positional) > len(names):
        raise RequestError(
            f"{owner}.caption takes {len(names)} option(s) after the image ({', '.join(names) or 'none'}), "
            f"got {len(positional)} values: pass options by name."
        )
    given = dict(zip(names, positional, strict=False))
    twice = sorted(set(given) & set(named))
    if twice:
        raise RequestError(f"{owner}.caption got {', '.join(twice)} twice: by position and by name.")
    given.update(named)
    unknown = sorted(set(given) - set(names))
    if unknown:
        allowed = ", ".join(names) or "none"
        raise RequestError(f"{owner} has no caption option {', '.join(unknown)}; its options: {allowed}.")
    alternatives = PROMPT.name in names and LANGUAGE.name in names
    given = {name: value for name, value in given.items() if value is not None or not _may_be_none(name, alternatives)}
    settings = {name: _checked(BY_NAME[name], value) for name, value in given.items()}
    if PROMPT.name in settings and LANGUAGE.name in settings:
        raise RequestError("Give a caption prompt or a language, not both: the language picks the prompt.")
    return settings


def _may_be_none(name: str, alternatives: bool) -> bool:
    return name == PROMPT.name or (name == LANGUAGE.name and alternatives)


def _checked(option: CaptionOption, value: Any) -> str:
    """``value`` as the family will use it (a cleaned prompt), or the option's refusal."""
    if option is PROMPT:
        return clean_question(value)
    if option.check is not None:
        option.check(value)
    if option.choices is not None and value not in option.choices:
        raise RequestError(f"Unknown caption {option.name} {value!r}: use one of {', '.join(option.choices)}.")
    return str(value)
