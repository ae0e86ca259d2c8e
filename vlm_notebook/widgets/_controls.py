"""Controls for a family's own caption options, built from the options' data.

A family names its caption options in ``VLM.caption_options``; each option's data
(``vlm_notebook.caption_options``) says what control it gets: a choice among its values with its
default (Qwen2-VL's language, Moondream's length), the prompt box, or free text for a name the
data does not know. A widget may map a name to another factory (``VLMWidget.option_controls``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ipywidgets as widgets

from .. import caption_options
from ..errors import RequestError
from ..models.base import VLM

#: Builds the control for one caption option of ``model``; its ``value`` is the option's value,
#: and an empty value ("" or None) means the family's default.
ControlFactory = Callable[[VLM], Any]

#: One width for every description, so the boxes of a widget start at the same place.
LABELLED = {"description_width": "7em"}


def text_control(label: str, placeholder: str = "") -> ControlFactory:
    """A free-text option, left empty for the family's default."""

    def build(model: VLM) -> Any:
        return widgets.Text(value="", placeholder=placeholder, description=label, style=LABELLED)

    return build


class Choice(widgets.Dropdown):  # type: ignore[misc]  # ipywidgets is untyped
    """A Dropdown whose value, set from Python, is checked as the family's API checks it.

    A value outside the choices is refused with a RequestError naming them (traitlets' own
    TraitError would say nothing a user can act on): ``check``'s, the family's own check, so that
    the widget says what the API says, or else "Unknown caption <label> ...: use one of ...".
    """

    def __init__(self, label: str, choices: Sequence[str], default: str, check: Callable[[Any], object] | None) -> None:
        super().__init__(options=tuple(choices), value=default, description=label, style=LABELLED)
        self._check = check

    def refuse_unless_a_choice(self, value: Any) -> None:
        if value in self.options:
            return
        if self._check is not None:
            self._check(value)  # raises the family's RequestError
        choices = ", ".join(self.options)
        raise RequestError(f"Unknown caption {self.description.lower()} {value!r}: use one of {choices}.")


def choice_control(
    label: str, choices: Sequence[str], default: str, check: Callable[[Any], object] | None = None
) -> ControlFactory:
    """An option with a few fixed values (Moondream's caption length: short, normal, long); ``check``
    is the family's own check of a value, which refuses one outside ``choices`` (see ``Choice``)."""

    def build(model: VLM) -> Any:
        return Choice(label, choices, default, check)

    return build


def prompt_control(model: VLM) -> Any:
    """The caption prompt, showing the family's default prompt as the placeholder."""
    default = str(getattr(model, "default_prompt", ""))
    return text_control("Prompt", default)(model)


def option_control(name: str) -> ControlFactory:
    """The control the option's data asks for: a choice among its values, the prompt box, or free text."""
    option = caption_options.BY_NAME.get(name)
    if option is caption_options.PROMPT:
        return prompt_control
    if option is not None and option.choices:
        return choice_control(
            option.name.capitalize(), option.choices, option.default or option.choices[0], option.check
        )
    return _fallback(name)


def build_controls(model: VLM, factories: Mapping[str, ControlFactory]) -> dict[str, Any]:
    """One control per caption option of ``model``, in the family's order."""
    return {name: factories.get(name, option_control(name))(model) for name in model.caption_options}


def option_values(controls: Mapping[str, Any]) -> dict[str, Any]:
    """The caption options to pass: a control left empty means the family's default."""
    return {name: control.value for name, control in controls.items() if control.value not in ("", None)}


def set_option_values(controls: Mapping[str, Any], values: Mapping[str, Any], model: VLM) -> None:
    """Put ``values`` into their controls; an option the family does not have, or a value it does not
    take, is refused with a RequestError before any control changes."""
    unknown = sorted(set(values) - set(controls))
    if unknown:
        allowed = ", ".join(controls) or "none"
        raise RequestError(
            f"{type(model).__name__} has no caption option {', '.join(unknown)}; its options: {allowed}."
        )
    for name, value in values.items():
        _refuse_unless_it_fits(name, controls[name], value)
    for name, value in values.items():
        free_text = isinstance(controls[name], widgets.Text)
        controls[name].value = "" if free_text and value is None else value  # None: the family's default


def _refuse_unless_it_fits(name: str, control: Any, value: Any) -> None:
    if isinstance(control, Choice):
        control.refuse_unless_a_choice(value)
    elif isinstance(control, widgets.Text) and not isinstance(value, (str, type(None))):
        raise RequestError(f"The caption option {name} must be text, got a {type(value).__name__}.")


def _fallback(name: str) -> ControlFactory:
    return text_control(name.replace("_", " ").capitalize())
