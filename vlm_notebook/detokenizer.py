"""Token ids to text, token by token, without ever splitting a UTF-8 character.

Both the streamed chunks and the non-streamed text come from the same ``tokenizers``
tokenizer, so the chunks joined equal the whole text byte for byte. The answer's leading
white space (SmolVLM answers after "Assistant:" with a space) is dropped in both.
"""

from __future__ import annotations

from tokenizers import Tokenizer
from tokenizers.decoders import DecodeStream


class Detokenizer:
    """Turns one token id at a time into the text it completes ("" while a character is partial)."""

    def __init__(self, tokenizer: Tokenizer):
        self._tokenizer = tokenizer
        self._stream = DecodeStream(skip_special_tokens=True)
        self._started = False

    def step(self, token_id: int) -> str:
        piece = self._stream.step(self._tokenizer, token_id) or ""
        if not self._started:
            piece = piece.lstrip()
            self._started = bool(piece)
        return piece

