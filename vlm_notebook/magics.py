"""IPython magics: ``%load_ext vlm_notebook``, then ``%vlm_caption``, ``%vlm_query``, ``%vlm_models``.

The answer streams into the cell's output as it is generated (plain stdout, which a saved
notebook keeps as one stream of text). The magic also returns it as an ``Answer``: assign it
(``text = %vlm_caption img``) or use ``_`` in the next cell. It is not shown a second time.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from IPython.core.error import UsageError
from IPython.core.getipython import get_ipython
from IPython.core.magic import Magics, cell_magic, line_cell_magic, line_magic, magics_class, no_var_expand
from IPython.core.magic_arguments import argument, magic_arguments
from IPython.display import publish_display_data
from IPython.utils.process import arg_split  # type: ignore[attr-defined]
from traitlets import Integer, Unicode

from . import caption_options, hub, registry
from .chat import Chat
from .errors import ImageError, RequestError
from .images import is_url
from .models.base import VLM
from .options import runtime_flags
from .stream import StreamStats, TextStream


class Answer(str):
    """An answer's text (a ``str``) with its ``stats``.

    Displayed in the cell that made it, it shows nothing: the text was streamed there already.
    """

    stats: StreamStats | None
    _cell: int | None

    def __new__(cls, text: str, stats: StreamStats | None = None, cell: int | None = None) -> Answer:
        answer = super().__new__(cls, text)
        answer.stats = stats
        answer._cell = cell
        return answer

    def _ipython_display_(self) -> None:
        shell = get_ipython()
        if shell is not None and self._cell == shell.execution_count:
            return
        publish_display_data({"text/plain": str(self)})


def _caption_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """A flag for every family's caption options (``caption_options.ALL``); a family refuses those it lacks."""
    for option in reversed(caption_options.ALL):
        name, settings = caption_options.flag(option)
        function = argument(name, **settings)(function)
    return function


def _common_options(function: Callable[..., Any]) -> Callable[..., Any]:
    for decorate in reversed(
        [
            argument("--model", "-m", help="model name, Hub id or checkpoint directory (default: default_model)"),
            *(argument(name, **settings) for name, settings in runtime_flags()),
            argument("--max-new-tokens", type=int, help="longest answer, in tokens (default: max_new_tokens)"),
            argument("--no-stream", action="store_true", help="show the answer only when it is complete"),
            argument("--stats", action="store_true", help="add a line: time to first token, tokens, tokens/s"),
        ]
    ):
        function = decorate(function)
    return function


@magics_class
class VLMMagics(Magics):
    """Caption images and ask about them from notebook cells, streaming the answer."""

    default_model = Unicode("smolvlm-256m", help="The model used when --model is not given.").tag(config=True)
    max_new_tokens = Integer(256, help="The longest answer, in tokens, when --max-new-tokens is not given.").tag(
        config=True
    )

    def __init__(self, shell: Any = None, **kwargs: Any):
        super().__init__(shell, **kwargs)
        self._models: dict[tuple[str, str, str, str], VLM] = {}
        self._chat: Chat | None = None  # the kernel's conversation (%%vlm_chat)

    @no_var_expand
    @magic_arguments()
    @argument("image", help="an image file's path, or the name of a variable holding an image, array or bytes")
    @_caption_options
    @_common_options
    @line_magic
    def vlm_caption(self, line: str) -> Answer:
        """Caption IMAGE, streaming the caption into the cell."""
        args = self._parse(self.vlm_caption, line)
        options = {option.name: getattr(args, option.name) for option in caption_options.ALL}
        model = self.model(args.model, device=args.device, dtype=args.dtype)
        call = partial(
            model.caption_with,
            self._image(args.image),
            options={name: value for name, value in options.items() if value is not None},
            max_new_tokens=self._max_new_tokens(args),
        )
        return self._answer(call, args)

    @no_var_expand
    @magic_arguments()
    @argument("image", help="an image file's path, or the name of a variable holding an image, array or bytes")
    @argument("question", nargs="*", help="the question (or, in the cell form, the cell's body)")
    @_common_options
    @line_cell_magic
    def vlm_query(self, line: str, cell: str | None = None) -> Answer:
        """Answer a question about IMAGE: %vlm_query IMAGE "QUESTION", or %%vlm_query IMAGE with the question below.

        Quote a question that ends with "?" on the line: IPython reads a trailing "?" as a request for help.
        """
        args = self._parse(self.vlm_query, line)
        if cell is not None and args.question:
            raise RequestError("Give the question either on the %%vlm_query line or in the cell, not both.")
        question = cell if cell is not None else _unquote(" ".join(args.question))
        model = self.model(args.model, device=args.device, dtype=args.dtype)
        call = partial(
            model.query,
            self._image(args.image),
            question,
            max_new_tokens=self._max_new_tokens(args),
        )
        return self._answer(call, args)

    @no_var_expand
    @magic_arguments()
    @argument("image", nargs="?", help="the picture to talk about: starts a new conversation (omit it to go on)")
    @argument("--new", action="store_true", help="start again on the same picture, forgetting what was said")
    @_common_options
    @cell_magic
    def vlm_chat(self, line: str, cell: str) -> Answer:
        """Go on with this kernel's conversation about a picture: the cell's body is the next question.

        %%vlm_chat IMAGE starts a conversation about IMAGE; later %%vlm_chat cells continue it.
        """
        args = self._parse(self.vlm_chat, line)
        model = self.model(args.model, device=args.device, dtype=args.dtype)
        if args.image is not None:
            self._chat = model.chat(self._image(args.image))
        elif self._chat is None:
            raise RequestError("No conversation yet: start one with %%vlm_chat IMAGE, then ask on in later cells.")
        elif self._chat.model is not model:
            raise RequestError("This conversation is with another model: name its picture again to start one with it.")
        elif args.new:
            self._chat.reset()
        chat = self._chat
        return self._answer(partial(chat.ask, cell, max_new_tokens=self._max_new_tokens(args)), args)

    @line_magic
    def vlm_models(self, line: str = "") -> None:
        """List the known model names: family, whether loaded in this kernel, whether available offline."""
        loaded = {model.entry.name for model in self._models.values()}
        rows = [("name", "family", "loaded", "offline", "source")]
        for entry in registry.known_models():
            offline = "yes" if hub.is_available_offline(entry.source, entry.revision) else "no"
            rows.append((entry.name, entry.family, "yes" if entry.name in loaded else "no", offline, entry.origin))
        widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]) - 1)]
        for row in rows:  # each column as wide as its longest value, so every row lines up
            print(" ".join(value.ljust(width) for value, width in zip(row[:-1], widths, strict=True)), row[-1])

    def model(self, name: str | None = None, *, device: str = "auto", dtype: str = "auto") -> VLM:
        """The model for ``name`` (default ``default_model``) on ``device`` in ``dtype``, loaded once
        per kernel and reused."""
        entry = registry.resolve(_unquote(name or self.default_model))
        key = (entry.family, entry.source, device, dtype)
        if key not in self._models:
            model = registry.get_model(entry.name, device=device, dtype=dtype)
            model.load()
            self._models[key] = model
        return self._models[key]

    def _max_new_tokens(self, args: Any) -> int:
        # Not `args.max_new_tokens or ...`: 0 must reach the model, which refuses it as the API does.
        value: int = self.max_new_tokens if args.max_new_tokens is None else args.max_new_tokens
        return value

    def _parse(self, magic: Callable[..., Any], line: str) -> Any:
        parser = magic.parser  # type: ignore[attr-defined]
        try:
            return parser.parse_intermixed_args(arg_split(line, strict=True))
        except (UsageError, ValueError) as error:
            name = magic.__name__
            raise RequestError(f"%{name}: {error}. See %{name}? for its options.") from None

    def _image(self, name: str) -> Any:
        """A variable of the notebook by that name, else a file path."""
        name = _unquote(name)
        namespace = self.shell.user_ns if self.shell is not None else {}
        if name in namespace:
            return namespace[name]
        if not is_url(name) and _nothing_at(Path(name).expanduser()):
            raise ImageError(f"No variable or file named {name!r}: define the variable first, or give a file path.")
        return name  # load_image opens it, or says why not (a URL, a name too long for the file system)

    def _answer(self, call: Callable[..., str | TextStream], args: Any) -> Answer:
        stream = call(stream=True)
        assert isinstance(stream, TextStream)
        with stream:  # an interrupt (KeyboardInterrupt) cancels the generation before it propagates
            for chunk in stream:
                if not args.no_stream:
                    sys.stdout.write(chunk)
                    sys.stdout.flush()
        text = stream.text
        if args.no_stream:
            sys.stdout.write(text)
        sys.stdout.write("\n")
        if args.stats:
            print(stream.stats.summary())
        sys.stdout.flush()
        return Answer(text, stream.stats, self.shell.execution_count if self.shell is not None else None)


def _nothing_at(path: Path) -> bool:
    """True when the file system says nothing is there; a path it cannot look up at all (a name over
    255 bytes) is left to ``load_image``, which says what is wrong with it."""
    try:
        return not path.exists()
    except (OSError, ValueError):
        return False


def _unquote(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text
