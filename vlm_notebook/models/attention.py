"""Attention of one new token over the keys and values before it, as every decoding loop here needs it.

SmolVLM's and Qwen2-VL's own step and native Moondream call :func:`attend_one_query`; models that
decode through transformers' ``generate`` get it through :func:`decode_with_it`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

#: The name transformers knows :func:`transformers_attention` by (its masks are "sdpa"'s).
TRANSFORMERS_NAME = "vlm_notebook_sdpa"
#: Arguments that change what attention computes: a call with one of them set goes to "sdpa".
_CHANGES_ATTENTION = ("softcap", "s_aux", "sinks", "position_bias", "output_attentions")


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


def transformers_attention(
    module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
    attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None, **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' "sdpa" attention, but one decoded token's (a batch of one, no mask: every
    position seen) through :func:`attend_one_query`."""
    one_token = query.shape[0] == 1 and query.shape[2] == 1 and attention_mask is None and not dropout
    changed = [kwargs.get(name) for name in _CHANGES_ATTENTION]
    if not one_token or any(setting is not None and setting is not False for setting in changed):
        general: tuple[torch.Tensor, None] = sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout, scaling, **kwargs
        )
        return general
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    mixed = attend_one_query(query, key[0], value[0], scale)
    return mixed.transpose(1, 2).contiguous(), None  # (1, 1, heads, dim), as "sdpa" returns it


def decode_with_it(model: PreTrainedModel) -> None:
    """Have ``model``'s text decoder attend through :func:`transformers_attention` where it uses
    "sdpa" and computes in bf16 or fp16 on a CPU: what ``generate`` decodes then gets the speed of
    :func:`attend_one_query`, everything else stays "sdpa"'s."""
    decoder = model.get_decoder()
    on_cpu_in_half = model.device.type == "cpu" and model.dtype in (torch.bfloat16, torch.float16)
    if not isinstance(decoder, PreTrainedModel) or not on_cpu_in_half:
        return
    if decoder.config._attn_implementation != "sdpa":
        return
    AttentionInterface.register(TRANSFORMERS_NAME, transformers_attention)
    AttentionMaskInterface.register(TRANSFORMERS_NAME, sdpa_mask)
    decoder.set_attn_implementation(TRANSFORMERS_NAME)
