"""A box that takes a picture pasted from the clipboard (Ctrl+V, or ⌘V on a Mac).

ipywidgets has no control that reads the clipboard, so this one is an anywidget: a few lines of
browser code (``_ESM``) listen for a paste on the box, and send the first picture the clipboard
holds, as its file's bytes, to the kernel in one custom message. The kernel side hands the bytes
to ``on_picture``; a paste without a picture (text, say), or with one larger than a message to the
kernel may be (``MAX_PASTE_BYTES``: Jupyter's server closes the connection on a larger one), is
refused in words through ``on_refused``, and nothing else happens. Clicking the box gives it the
keyboard, so that the next paste goes to it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anywidget
import traitlets

#: The kinds of message the browser sends: a pasted picture's bytes, no picture, a picture too large.
PICTURE, NOTHING, TOO_LARGE = "picture", "nothing", "too-large"
#: The largest picture sent to the kernel: under the 10 MiB that Jupyter's server takes in one message.
MAX_PASTE_BYTES = 8 << 20
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
    if (file.size > model.get("max_bytes")) {
      model.send({ kind: "too-large", size: file.size });
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
    """Click it, then paste: ``on_picture(bytes, name)`` receives the picture the clipboard held;
    ``on_refused(message)`` says why a paste was not taken."""

    _esm = _ESM
    label = traitlets.Unicode("Paste a picture (Ctrl+V)").tag(sync=True)
    max_bytes = traitlets.Int(MAX_PASTE_BYTES).tag(sync=True)

    def __init__(self, on_picture: Callable[[bytes, str], None], on_refused: Callable[[str], None], **kwargs: Any):
        super().__init__(**kwargs)
        self._on_picture, self._on_refused = on_picture, on_refused
        self.on_msg(self._received)

    def _received(self, widget: Any, content: Any, buffers: list[Any]) -> None:
        kind = content.get("kind") if isinstance(content, dict) else None
        if kind == PICTURE and buffers:
            self._on_picture(bytes(buffers[0]), str(content.get("name") or "pasted picture"))
        elif kind == TOO_LARGE:
            size = content.get("size")
            megabytes = f"{size / (1 << 20):.0f} MB" if isinstance(size, (int, float)) else "too large"
            self._on_refused(
                f"The pasted picture is {megabytes}; a paste can carry at most {self.max_bytes >> 20} MB: "
                "paste a smaller one, or set it from Python: widget.image = 'path/to/picture.png'."
            )
        elif kind in (PICTURE, NOTHING):
            self._on_refused(NO_PICTURE_PASTED)
