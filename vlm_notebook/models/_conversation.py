"""A chat's KV cache between turns, for the transformers families.

After a turn, the cache holds the prompt and (with ``generate``) the answer but its last token.
The next turn's whole history is rendered with the chat template and tokenized; the kept cache is
cut to the longest prefix its ids share with the new prompt's ids (the previous answer may end
differently once the template closes it), and only the rest is prefilled. KV at a position depends
only on the ids up to it, so greedy answers equal a cold run's. The cache is taken out of the
chat's memory while a turn runs and put back only when the turn ends normally: a turn that fails
mid-prefill (a cancel between layers, an error) leaves nothing half-written behind, and the next
turn starts again from the picture's prefix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..errors import RequestError
from ..stream import TokenSink

_MEMORY_KEY = "kv"


@dataclass
class KeptConversation:
    """The token ids (1 x n) whose keys and values ``cache`` holds."""

    ids: torch.Tensor
    cache: Any


def resume(
    memory: dict[str, Any], prompt_ids: torch.Tensor, prefix_cache: Any, context_tokens: int | None,
    sink: TokenSink | None,
) -> Any:
    """The cache to continue ``prompt_ids`` from: the chat's own when it covers more of them than
    ``prefix_cache`` (the picture's prefix), else ``prefix_cache``. Records the reuse in the stats."""
    length = prompt_ids.shape[1]
    if context_tokens is not None and length >= context_tokens:
        raise RequestError(
            f"The conversation has grown to {length} tokens; this model's context holds {context_tokens} for the "
            "prompt and the answer together. Start over with chat.reset() (or a new chat)."
        )
    kept: KeptConversation | None = memory.pop(_MEMORY_KEY, None)
    if prefix_cache is None:  # no picture prefix (a template without one image slot): no reuse at all
        return None
    cache, reused = prefix_cache, prefix_cache.get_seq_length()
    shared = min(common_prefix(kept.ids, prompt_ids), length - 1) if kept is not None else 0
    if kept is not None and shared > reused:
        cache, reused = crop(kept.cache, shared), shared
    if sink is not None:
        sink.set_extra("conversation_cache", "hit" if cache is not prefix_cache else "miss")
        sink.set_extra("reused_tokens", reused)
        sink.set_extra("prefilled_tokens", length - reused)
    return cache


def keep(memory: dict[str, Any], prompt_ids: torch.Tensor, answer_ids: list[int], cache: Any) -> None:
    """Put the turn's cache back into the chat's memory, with the ids it holds."""
    if cache is None:
        return
    answer = torch.tensor([answer_ids], dtype=prompt_ids.dtype, device=prompt_ids.device)
    ids = torch.cat([prompt_ids, answer], dim=1)
    length = cache.get_seq_length()
    if length <= ids.shape[1]:
        memory[_MEMORY_KEY] = KeptConversation(ids[:, :length], cache)


def common_prefix(first: torch.Tensor, second: torch.Tensor) -> int:
    """How many leading ids two 1 x n tensors share."""
    size = min(first.shape[1], second.shape[1])
    differ = (first[0, :size].to(second.device) != second[0, :size]).nonzero()
    return int(differ[0, 0]) if differ.numel() else size


def crop(cache: Any, length: int) -> Any:
    """``cache`` cut to its first ``length`` positions (in place)."""
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)
    return cache
