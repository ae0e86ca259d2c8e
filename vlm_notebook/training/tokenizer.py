"""A small byte-level BPE tokenizer trained on a model's English text.

Byte-level means every string can be encoded: the 256 byte symbols are always in the
vocabulary. The merges are learnt from English (ASCII) text only, so English words
become one or a few tokens while Japanese or emoji stay raw byte tokens, several per
character -- which is what exercises a streaming decoder on multi-byte UTF-8.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers


def _english_only(texts: Iterable[str]) -> list[str]:
    """The distinct texts, in first-seen order; any non-ASCII text is an error."""
    unique = list(dict.fromkeys(texts))
    for text in unique:
        if not text.isascii():
            raise ValueError(f"BPE corpus must be English (ASCII) text only, got {text!r}")
    return unique


def build_tokenizer(
    corpus: Iterable[str],
    special_tokens: Sequence[str],
    vocab_size: int = 1024,
) -> Tokenizer:
    """Train a byte-level BPE on ``corpus`` with ``special_tokens`` first in the vocabulary.

    ``special_tokens`` get ids 0, 1, 2, ... in the given order and are never split.
    Merges continue (minimum pair frequency 1) until ``vocab_size`` is reached or every
    word of the corpus is a single token.
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        show_progress=False,
        special_tokens=[AddedToken(t, special=True, normalized=False) for t in special_tokens],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(_english_only(corpus), trainer=trainer)
    return tokenizer
