"""Attention of one new token over the keys and values before it, as every decoding loop here needs it."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def attend_one_query(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scale: float) -> torch.Tensor:
    """One new token's attention: ``query`` (1 x heads x 1 x dim) over ``keys`` and ``values`` (kv
    heads x positions x dim; query head ``h`` reads kv head ``h // (heads / kv heads)``, as
    transformers repeats them). torch's fused operator, but for bf16 and fp16 on a CPU, where it
    takes several times as long as :func:`attention_in_three_products` (with the same sums in
    fp32), the longer the more (``benchmarks/results/decode_attention.md``)."""
    if keys.device.type == "cpu" and keys.dtype in (torch.bfloat16, torch.float16):
        return attention_in_three_products(query, keys, values, scale)
    return F.scaled_dot_product_attention(query, keys[None], values[None], scale=scale, enable_gqa=True)


def attention_in_three_products(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scale: float
) -> torch.Tensor:
    """:func:`attend_one_query` as the scores, their softmax and the weighted values, summed in fp32
    and rounded to the query's format once at the end, as the fused operator does."""
    kv_heads, size = keys.shape[0], keys.shape[-1]
    grouped = query.reshape(kv_heads, -1, size).float()
    scores = torch.bmm(grouped, keys.float().transpose(1, 2)).mul_(scale)
    mixed = torch.bmm(torch.softmax(scores, dim=-1), values.float())
    return mixed.to(query.dtype).view(query.shape)
