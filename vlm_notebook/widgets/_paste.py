"""A box that takes a picture pasted from the clipboard (Ctrl+V, or ⌘V on a Mac).

ipywidgets has no control that reads the clipboard, so this one is an anywidget: a few lines of
browser code (``_ESM``) listen for a paste on the box, and send the first picture the clipboard
holds, as its file's bytes, to the kernel in one custom message. The kernel side hands the bytes
to ``on_picture``; a paste without a picture (text, say) reaches ``on_nothing``. Clicking the box
gives it the keyboard, so that the next paste goes to it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anywidget
import traitlets

#: The kind of a message that carries a pasted picture's bytes, and of one that says there was none.
PICTURE, NOTHING = "picture", "nothing"
#: What a widget says when a paste held no picture.
NO_PICTURE_PASTED = "The clipboard holds no picture: copy one (right-click a picture, Copy image), then paste it here."

_ESM = """
function render({ model, el }) {
  const box = document.createElement("div");
  box.className = "vlm-paste-box";
  box.tabIndex = 0;
  box.title = "Click here, then paste a picture you copied";
  box.textContent = model.get("label");
  box.style.cssText = "display: inline-flex; align-items: center; height: 28px; box-sizing: border-box; "
    + "padding: 0 10px; border: 1px dashed #888; border-radius: 2px; cursor: pointer; white-space: nowrap;";
  box.addEventListener("click", () => box.focus());
  box.addEventListener("paste", async (event) => {
    event.preventDefault();
    const items = Array.from(event.clipboardData ? event.clipboardData.items : []);
    const item = items.find((each) => each.kind === "file" && each.type.startsWith("image/"));
    const file = item ? item.getAsFile() : null;
    if (!file) {
      model.send({ kind: "nothing" });
      return;
    }
    const bytes = await file.arrayBuffer();
    model.send({ kind: "picture", name: file.name || "pasted picture", type: file.type }, undefined, [bytes]);
  });
  el.appendChild(box);
}
export default { render };
"""


class PasteBox(anywidget.AnyWidget):
    """Click it, then paste: ``on_picture(bytes, name)`` receives the picture the clipboard held."""

    _esm = _ESM
    label = traitlets.Unicode("Paste a picture (Ctrl+V)").tag(sync=True)

    def __init__(self, on_picture: Callable[[bytes, str], None], on_nothing: Callable[[], None], **kwargs: Any):
        super().__init__(**kwargs)
        self._on_picture, self._on_nothing = on_picture, on_nothing
        self.on_msg(self._received)

    def _received(self, widget: Any, content: Any, buffers: list[Any]) -> None:
        kind = content.get("kind") if isinstance(content, dict) else None
        if kind == PICTURE and buffers:
            self._on_picture(bytes(buffers[0]), str(content.get("name") or "pasted picture"))
        elif kind in (PICTURE, NOTHING):
            self._on_nothing()
