"""Attention where torch's fused operator is slow on a CPU in a half format.

Two cases, each with its own choice: one new token over the keys and values before it, as every
decoding loop needs it (:func:`attend_one_query`: SmolVLM's and Qwen2-VL's own step, native
Moondream's decoding), and many queries with no mask, each over every key as a vision encoder
needs it or causal as a prompt's prefill (:func:`attend_many_queries`: native Moondream's encoder
and image prefix). Models on transformers get both through :func:`attend_with_it`, and with it
:func:`keeping_prefix`: a new picture's prefix and first question in one pass, split so that the
numbers are those of two.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from ..cpu import has_fast_bf16
from . import onednn_attention

#: The name transformers knows :func:`transformers_attention` by (its masks are "sdpa"'s).
TRANSFORMERS_NAME = "vlm_notebook_sdpa"
#: Arguments that change what attention computes: a call with one of them set goes to "sdpa".
_CHANGES_ATTENTION = ("softcap", "s_aux", "sinks", "position_bias", "output_attentions")
#: While :func:`keeping_prefix` runs: the length of the prompt's prefix that is kept for reuse.
_kept_prefix: ContextVar[int | None] = ContextVar("vlm_notebook_kept_prefix", default=None)


def attend_one_query(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scale: float) -> torch.Tensor:
    """One new token's attention: ``query`` (1 x heads x 1 x dim) over ``keys`` and ``values`` (kv
    heads x positions x dim; query head ``h`` reads kv head ``h // (heads / kv heads)``, as
    transformers repeats them). torch's fused operator, but for bf16 and fp16 on a CPU, where it
    takes several times as long as :func:`attention_in_three_products` (with the same sums in
    fp32), the longer the more (``benchmarks/results/decode_attention.md``)."""
    if keys.device.type == "cpu" and keys.dtype in (torch.bfloat16, torch.float16):
        return attention_in_three_products(query, keys, values, scale)
    grouped = keys.shape[0] != query.shape[1]  # only then: some GPU kernels take no grouped heads
    return F.scaled_dot_product_attention(query, keys[None], values[None], scale=scale, enable_gqa=grouped)


def attention_in_three_products(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scale: float
) -> torch.Tensor:
    """:func:`attend_one_query` as the scores, their softmax and the weighted values, summed in fp32
    and rounded to the query's format once at the end, as the fused operator does."""
    kv_heads, size = keys.shape[0], keys.shape[-1]
    grouped = query.reshape(kv_heads, -1, size).float()
    scores = torch.bmm(grouped, keys.float().transpose(1, 2)).mul_(scale)
    mixed = torch.bmm(torch.softmax(scores, dim=-1), values.float())
    return mixed.to(query.dtype).view(1, -1, 1, values.shape[-1])


def attend_many_queries(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scale: float, causal: bool = False
) -> torch.Tensor:
    """Many queries' attention with no mask: each over every key (a vision encoder's) or, ``causal``,
    over the keys up to its own position (a prompt's prefill; as many keys as queries). ``query``
    batch x heads x queries x dim, ``keys`` and ``values`` batch x kv heads x keys x dim (query head
    ``h`` reads kv head ``h // (heads / kv heads)``); the result as torch's fused operator returns
    it. That operator, but for bf16 on a CPU with bf16 matrix instructions and at least
    ``MANY_QUERIES`` queries, where :func:`attend_in_bf16` takes about half its time or less
    (``benchmarks/results/vision_attention.md``)."""
    if bf16_scores_pay(query, keys, causal):
        return attend_in_bf16(query, keys, values, scale, causal)
    grouped = keys.shape[1] != query.shape[1]
    return F.scaled_dot_product_attention(query, keys, values, scale=scale, is_causal=causal, enable_gqa=grouped)


def bf16_scores_pay(query: torch.Tensor, keys: torch.Tensor, causal: bool) -> bool:
    """Whether :func:`attend_in_bf16` is the faster here (see :func:`attend_many_queries`)."""
    length = query.shape[2]
    on_fast_bf16 = query.device.type == "cpu" and query.dtype == torch.bfloat16 and has_fast_bf16()
    inference = not (query.requires_grad or keys.requires_grad)  # it writes into its own buffers
    return on_fast_bf16 and inference and length >= MANY_QUERIES and (not causal or keys.shape[2] == length)


#: Fewer queries than this go to torch's fused operator, which is the faster there.
MANY_QUERIES = 256


def attend_in_bf16(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scale: float, causal: bool = False
) -> torch.Tensor:
    """:func:`attend_many_queries` where :func:`bf16_scores_pay`: every query over every key as one
    oneDNN partition where it fuses (:func:`~vlm_notebook.models.onednn_attention.attend`), and
    otherwise, causal attention included, as :func:`scores_in_bf16`; both round the scores to bf16
    before their softmax."""
    fused = None if causal else onednn_attention.attend(query, keys, values, scale)
    return scores_in_bf16(query, keys, values, scale, causal) if fused is None else fused


#: Queries per block of a causal :func:`scores_in_bf16`: each leaves out the keys after its last
#: query (about half of them in all), and its scores stay in the CPU's caches; fewer where the
#: query heads of a key/value head go through one product together (their rows add up).
_CAUSAL_BLOCK = 320
_GROUPED_CAUSAL_BLOCK = 192


def scores_in_bf16(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scale: float, causal: bool = False
) -> torch.Tensor:
    """:func:`attend_many_queries` as three bf16 products per key/value head (sums in fp32, each
    result rounded to bf16; the query heads that share it stacked in one product), in blocks of
    queries when causal. Unlike the fused operator it rounds the scores to bf16 before their
    softmax: that attention alone then differs several times more from exact arithmetic, but a
    whole model's logits differ from fp32's about as much as with the fused operator or somewhat
    more, the rest of a bf16 model's rounding being the larger part
    (``benchmarks/results/vision_attention.md``)."""
    batch, heads, length, size = query.shape
    kv_heads = keys.shape[1]
    group = heads // kv_heads
    scaled = query * scale
    mixed = query.new_empty(batch, length, heads, size)
    block = (_GROUPED_CAUSAL_BLOCK if group > 1 else _CAUSAL_BLOCK) if causal else length
    for start in range(0, length, block):
        end = min(start + block, length)
        seen = end if causal else keys.shape[2]
        later = torch.ones(end - start, end - start, dtype=torch.bool).triu_(1) if causal else None
        scores = query.new_empty(group * (end - start), seen)  # reused: fresh memory costs page faults
        for item, kv_head in itertools.product(range(batch), range(kv_heads)):
            sharing = slice(kv_head * group, (kv_head + 1) * group)
            torch.mm(scaled[item, sharing, start:end].flatten(0, 1), keys[item, kv_head, :seen].t(), out=scores)
            if later is not None:
                scores.view(group, -1, seen)[:, :, start:end].masked_fill_(later, float("-inf"))
            torch.softmax(scores, dim=-1, out=scores)
            _weighted_values(scores, values[item, kv_head, :seen], into=mixed[item, start:end, sharing])
    return mixed.transpose(1, 2)


def _weighted_values(scores: torch.Tensor, values: torch.Tensor, into: torch.Tensor) -> None:
    """``scores`` (the stacked rows of ``into``'s heads) times ``values``, written into ``into``
    (queries x heads x dim): straight into it for one head, through a copy for several."""
    if into.shape[1] == 1:
        torch.mm(scores, values, out=into[:, 0])
    else:
        into.copy_(torch.mm(scores, values).view(into.shape[1], -1, values.shape[1]).transpose(0, 1))


def transformers_attention(
    module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
    attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None, **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' "sdpa" attention, but one decoded token's (a batch of one, no mask: every
    position seen) through :func:`attend_one_query`, and many queries with no mask (a vision
    encoder's; a prompt's, causal) through :func:`attend_in_bf16` where that pays; inside
    :func:`keeping_prefix`, a whole prompt's causal pass as the prefix's and then the rest's."""
    changed = [kwargs.get(name) for name in _CHANGES_ATTENTION]
    plain = attention_mask is None and not dropout and all(setting is None or setting is False for setting in changed)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    said = kwargs.get("is_causal")
    causal = bool(getattr(module, "is_causal", True) if said is None else said)
    kept = _kept_prefix.get()
    if plain and causal and kept is not None and kept < query.shape[2] == key.shape[2]:
        return _prefix_then_rest(module, query, key, value, kept, scaling, **kwargs)
    if plain and query.shape[0] == 1 and query.shape[2] == 1:
        mixed = attend_one_query(query, key[0], value[0], scale)
    elif plain and bf16_scores_pay(query, key, causal):
        mixed = attend_in_bf16(query, key, value, scale, causal)
    else:
        general: tuple[torch.Tensor, None] = sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout, scaling, **kwargs
        )
        return general
    return mixed.transpose(1, 2).contiguous(), None  # (batch, queries, heads, dim), as "sdpa" returns it


@contextmanager
def keeping_prefix(length: int) -> Iterator[None]:
    """While the block runs, a whole prompt's causal pass through :func:`transformers_attention`
    attends as its first ``length`` tokens alone and then the rest over their cache would: the
    numbers of two passes (the prefix kept for reuse, then the question's words) in one."""
    token = _kept_prefix.set(length)
    try:
        yield
    finally:
        _kept_prefix.reset(token)


def _prefix_then_rest(
    module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, kept: int,
    scaling: float | None, **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """:func:`transformers_attention` of the first ``kept`` queries over their own keys, then of the
    rest over all keys with the boolean mask and the contiguous keys a cache would give them."""
    prefix, _ = transformers_attention(
        module, query[:, :, :kept], key[:, :, :kept], value[:, :, :kept], None, 0.0, scaling, **kwargs
    )
    rest = query.shape[2] - kept
    seen = torch.ones(rest, key.shape[2], dtype=torch.bool, device=query.device).tril(kept)[None, None]
    words, _ = transformers_attention(
        module, query[:, :, kept:], key.contiguous(), value.contiguous(), seen, 0.0, scaling, **kwargs
    )
    return torch.cat([prefix, words], dim=1), None


def attends_through_it(model: PreTrainedModel) -> bool:
    """Whether ``model``'s text decoder attends through :func:`transformers_attention` (see
    :func:`attend_with_it`), so that :func:`keeping_prefix` applies to it."""
    decoder = model.get_decoder()
    return isinstance(decoder, PreTrainedModel) and decoder.config._attn_implementation == TRANSFORMERS_NAME


def attend_with_it(model: PreTrainedModel, vision: torch.nn.Module | None) -> None:
    """Have ``model``'s text decoder and its ``vision`` encoder attend through
    :func:`transformers_attention` where they use "sdpa" and compute in bf16 or fp16 on a CPU: what
    ``generate`` decodes, a prompt's prefill and what the encoder sees then get the speed of
    :func:`attend_one_query` and :func:`attend_many_queries`, everything else stays "sdpa"'s."""
    on_cpu_in_half = model.device.type == "cpu" and model.dtype in (torch.bfloat16, torch.float16)
    if not on_cpu_in_half:
        return
    for part in (model.get_decoder(), vision):
        if isinstance(part, PreTrainedModel) and part.config._attn_implementation == "sdpa":
            AttentionInterface.register(TRANSFORMERS_NAME, transformers_attention)
            AttentionMaskInterface.register(TRANSFORMERS_NAME, sdpa_mask)
            part.set_attn_implementation(TRANSFORMERS_NAME)
