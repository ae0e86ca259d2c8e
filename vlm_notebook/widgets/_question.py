"""A one-line box for questions whose Enter carries the text typed.

ipywidgets' ``Text`` sends Enter as a bare "submit" message and the text as state updates, and its
browser code holds a state update back while an earlier one of the same box is unanswered (the
message throttle) while custom messages go at once. With a slow kernel, Enter could overtake the
last keys, and the question arrived empty or cut short (the chat browser test caught it under
load). This box, an anywidget, sends the text with the Enter; its ``value`` follows the typing as
``Text``'s does, for a click on Send.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anywidget
import traitlets

_ESM = """
function render({ model, el }) {
  const row = document.createElement("div");
  row.style.cssText = "display: flex; align-items: center; width: 100%;";
  const label = document.createElement("label");
  label.className = "widget-label";
  label.style.cssText = "flex: none; text-align: right; margin-right: 8px; overflow: hidden; white-space: nowrap;";
  const input = document.createElement("input");
  input.type = "text";
  input.className = "vlm-question-box";
  input.style.cssText = "flex: 1 1 auto; min-width: 0; height: 28px; box-sizing: border-box; padding: 0 6px; "
    + "font: inherit; color: var(--jp-widgets-input-color, inherit); "
    + "background: var(--jp-widgets-input-background-color, #fff); "
    + "border: 1px solid var(--jp-widgets-input-border-color, #9e9e9e);";
  const show = () => {
    const description = model.get("description");
    label.textContent = description;
    label.style.display = description ? "" : "none";
    label.style.width = model.get("description_width");
    input.placeholder = model.get("placeholder");
    input.disabled = model.get("disabled");
    input.setAttribute("aria-label", description || model.get("placeholder"));
  };
  input.value = model.get("value");
  show();
  input.addEventListener("input", () => {
    model.set("value", input.value);
    model.save_changes();
  });
  input.addEventListener("keydown", (event) => {
    event.stopPropagation();  // the keys are the box's, not the notebook's shortcuts
    if (event.key === "Enter" && !event.isComposing) model.send({ event: "submit", value: input.value });
  });
  model.on("change:value", () => {
    if (input.value !== model.get("value")) input.value = model.get("value");
  });
  for (const name of ["description", "description_width", "placeholder", "disabled"]) model.on(`change:${name}`, show);
  model.on("msg:custom", (message) => {
    if (message.event !== "clear") return;
    // Empty, and send the empty text: it replaces any update of older text still held back.
    model.set("value", " ");
    model.set("value", "");
    model.save_changes();
  });
  row.append(label, input);
  el.appendChild(row);
}
export default { render };
"""


class QuestionBox(anywidget.AnyWidget):
    """Type, then Enter: ``value`` becomes the text the Enter found, then ``on_submit()`` runs.

    ``description`` labels the box on its left, in ``description_width`` (CSS), as ipywidgets'
    labelled controls are; a ``disabled`` box takes no typing and no Enter."""

    _esm = _ESM
    value = traitlets.Unicode("").tag(sync=True)
    placeholder = traitlets.Unicode("").tag(sync=True)
    description = traitlets.Unicode("").tag(sync=True)
    description_width = traitlets.Unicode("").tag(sync=True)
    disabled = traitlets.Bool(False).tag(sync=True)

    def __init__(self, on_submit: Callable[[], object], **kwargs: Any):
        super().__init__(**kwargs)
        self._on_submit = on_submit
        self.on_msg(self._received)

    def _received(self, widget: Any, content: Any, buffers: list[Any]) -> None:
        if self.disabled:  # an Enter that left the browser before the box was disabled
            return
        if isinstance(content, dict) and content.get("event") == "submit" and isinstance(content.get("value"), str):
            self.value = content["value"]
            self._on_submit()

    def clear(self) -> None:
        """Empty the box, here and in the browser (where an update of older text may be held back)."""
        self.value = ""
        self.send({"event": "clear"})
