"""SmolVLM's and Qwen2-VL's decoding step: one token through a Llama-shaped text model, without
transformers' ``generate``.

A step through ``generate`` pays for the per-step work of a general tool: masks, cache objects
that grow by concatenation, rotary angles recomputed, logits processors, hooks. :class:`LlamaStep`
calls the same weights as single operators (packed bf16 and int8 layers as they are), keeps keys
and values in buffers made once, reads rotary angles from a table, and attends with torch's fused
operator or, in half formats on a CPU, three products (:func:`attend_one_query`); its logits stay
within 1e-5 of transformers' (tests/test_decode.py) and greedy tokens equal ``generate``'s. The
engine (``vlm_notebook.engine``) calls it once per token. Decode speeds, with the machine they
were measured on: ``benchmarks/results/cpu_vs_openvino.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

from ..cpu import DecodingLinear, PackedLinear, PackedSiblings
from .attention import attend_one_query
from .graphs import Replayer, seen_so_far


def llama_text_model(model: torch.nn.Module) -> torch.nn.Module | None:
    """The Llama text model inside a transformers image-text model (SmolVLM's), if
    :class:`LlamaStep` can run it."""
    text = getattr(getattr(model, "model", None), "text_model", None)
    return text if _decodes_here(text, "llama") else None


def qwen2_vl_text_model(model: torch.nn.Module) -> torch.nn.Module | None:
    """Qwen2-VL's text model, if :class:`LlamaStep` can run it: a Llama with biases on its queries,
    keys and values, whose multimodal rotary positions are, for the answer's words, one position
    (on all three axes) moved by the prompt's offset (``position_offset``)."""
    text = getattr(getattr(model, "model", None), "language_model", None)
    return text if _decodes_here(text, "qwen2_vl_text") else None


def step_for(text_model: torch.nn.Module, lm_head: torch.nn.Module, device: torch.device) -> Callable[..., LlamaStep]:
    """What makes an answer's step over ``text_model`` (called with the cache, capacity and
    position offset): :class:`GraphedLlamaStep` on CUDA, :class:`LlamaStep` elsewhere."""
    step = GraphedLlamaStep if device.type == "cuda" else LlamaStep
    return partial(step, text_model, lm_head)


def _decodes_here(text: Any, model_type: str) -> bool:
    config = getattr(text, "config", None)
    if config is None or getattr(config, "model_type", None) != model_type:
        return False
    rope = getattr(config, "rope_parameters", None) or {}
    rotary = getattr(text, "rotary_emb", None)
    layer_types = getattr(config, "layer_types", None) or ["full_attention"]
    return (
        getattr(config, "hidden_act", None) == "silu"
        and rope.get("rope_type", "default") == "default"
        and getattr(rotary, "attention_scaling", None) == 1.0
        and isinstance(getattr(rotary, "inv_freq", None), torch.Tensor)
        and set(layer_types) == {"full_attention"}
        and not getattr(config, "use_sliding_window", False)
    )


class LlamaStep:
    """One token at a time through a Llama text model, continuing from the prefill's KV cache.

    ``cache`` is transformers' cache after the prompt; ``capacity`` the prompt plus the most new
    tokens. The cache's keys and values are copied into buffers of that size once. The rotary
    position of the token at cache position ``p`` is ``p + position_offset`` (Qwen2-VL's words
    after a picture: its ``rope_deltas``; 0 for a Llama). A step makes
    about 30 tensor operations per layer where transformers' modules make about 65: at SmolVLM's
    size the Python work per operation, not the arithmetic, decides the difference.
    """

    def __init__(
        self, text_model: Any, lm_head: torch.nn.Module, cache: Any, capacity: int, position_offset: int = 0
    ):
        config = text_model.config
        self._embeddings: torch.Tensor = text_model.embed_tokens.weight
        self._layers = [_Layer.of(layer) for layer in text_model.layers]
        self._final_norm = _rms_norm(text_model.norm)
        self._head = lm_head  # a module call, once a step: its hooks run, as in generate
        self._heads, self._kv_heads = config.num_attention_heads, config.num_key_value_heads
        self._head_dim = getattr(config, "head_dim", None) or config.hidden_size // self._heads
        self._scaling = float(self._head_dim) ** -0.5
        self._length = cache.get_seq_length()
        self._keys, self._values = _buffers(cache, capacity)
        inv_freq = text_model.rotary_emb.inv_freq
        self._cos, self._sin = _rotary_table(inv_freq, capacity, self._keys.dtype, position_offset)

    def __call__(self, token_id: int) -> torch.Tensor:
        self._check_room()
        position = self._length
        hidden = self._embeddings[token_id].view(1, -1)
        logits = self._through_layers(hidden, partial(self._attend, cos=self._cos[position], sin=self._sin[position]))
        self._length += 1
        return logits

    def _through_layers(self, hidden: torch.Tensor, attend: Attend) -> torch.Tensor:
        """The next logits from the new token's ``hidden`` state, ``attend`` mixing in the positions so far."""
        for layer, keys, values in zip(self._layers, self._keys, self._values, strict=True):
            hidden = hidden + attend(layer, layer.attention_norm(hidden), keys, values)
            gate, up = layer.gate_and_up(layer.mlp_norm(hidden)).chunk(2, dim=-1)
            hidden = hidden + layer.down(F.silu(gate) * up)
        logits: torch.Tensor = self._head(self._final_norm(hidden))
        return logits

    def _project(
        self, layer: _Layer, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The new token's query (1 x heads x 1 x dim), key and value (kv heads x dim), rotated."""
        projected = layer.query_key_value(hidden)
        split = (self._heads + self._kv_heads) * self._head_dim
        query_and_key = _rotate(projected[:, :split].view(-1, self._head_dim), cos, sin)
        query = query_and_key[: self._heads].view(1, self._heads, 1, self._head_dim)
        return query, query_and_key[self._heads :], projected[:, split:].view(self._kv_heads, self._head_dim)

    def _check_room(self) -> None:
        if self._length >= self._cos.shape[0]:
            raise RuntimeError(f"the decoder's buffers hold {self._cos.shape[0]} tokens; all are used")

    def extend(self, cache: Any) -> None:
        """Append to ``cache`` (transformers' cache after the prompt, which this step started from)
        the keys and values of the tokens fed since, so that it holds them as ``generate`` leaves
        it: a conversation's next turn then reads only what follows them."""
        fed = slice(cache.get_seq_length(), self._length)
        for index in range(len(self._layers)):
            cache.update(self._keys[index, None, :, fed], self._values[index, None, :, fed], index)

    def _attend(
        self,
        layer: _Layer,
        hidden: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
    ) -> torch.Tensor:
        """Self-attention of the new token over every position so far (keys/values: kv heads x capacity x dim)."""
        position, end = self._length, self._length + 1
        query, key, value = self._project(layer, hidden, cos, sin)
        keys[:, position], values[:, position] = key, value
        mixed = attend_one_query(query, keys[:, :end], values[:, :end], self._scaling)
        return layer.output(mixed.view(1, -1))


class GraphedLlamaStep(LlamaStep):
    """:class:`LlamaStep` with every shape fixed, for a GPU: the token and its position are tensors
    on the device, keys and values are written at that position, and attention reads the whole
    buffer through a mask of the positions so far. On CUDA the step is captured once as a CUDA graph
    (at the answer's second token, so the first token does not wait for it) and replayed: one
    launch a token instead of one per operator. Elsewhere (the CPU tests) the same step runs
    operator by operator, so its numbers are checked against :class:`LlamaStep`'s."""

    def __init__(
        self, text_model: Any, lm_head: torch.nn.Module, cache: Any, capacity: int, position_offset: int = 0
    ):
        super().__init__(text_model, lm_head, cache, capacity, position_offset)
        device = self._keys.device
        self._token = torch.zeros(1, dtype=torch.long, device=device)
        self._position = torch.full((1,), self._length, dtype=torch.long, device=device)
        self._positions = torch.arange(capacity, device=device)
        #: Replays a CUDA graph of the step on CUDA; else runs it operator by operator.
        self.replayer = Replayer(self._fixed_step, self._position)

    def __call__(self, token_id: int) -> torch.Tensor:
        self._check_room()
        self._token.fill_(token_id)
        logits = self.replayer()
        self._length += 1
        return logits

    def _fixed_step(self) -> torch.Tensor:
        """One step that reads the token and position tensors and moves the position on by one."""
        hidden = self._embeddings.index_select(0, self._token)
        cos, sin = self._cos.index_select(0, self._position), self._sin.index_select(0, self._position)
        seen = seen_so_far(self._positions, self._position, hidden.dtype)
        logits = self._through_layers(hidden, partial(self._attend_fixed, cos=cos, sin=sin, seen=seen))
        self._position.add_(1)
        return logits

    def _attend_fixed(
        self, layer: _Layer, hidden: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
        cos: torch.Tensor, sin: torch.Tensor, seen: torch.Tensor,
    ) -> torch.Tensor:
        """``_attend`` over the whole buffer, with ``seen`` (0 up to the position, -inf after) as mask."""
        query, key, value = self._project(layer, hidden, cos, sin)
        keys.index_copy_(1, self._position, key.unsqueeze(1))
        values.index_copy_(1, self._position, value.unsqueeze(1))
        mixed = F.scaled_dot_product_attention(
            query, keys[None], values[None], attn_mask=seen, scale=self._scaling, enable_gqa=True
        )
        return layer.output(mixed.view(1, -1))


Linear = Callable[[torch.Tensor], torch.Tensor]
#: Mixes one layer's normed hidden state with its keys and values (layer, hidden, keys, values).
Attend = Callable[["_Layer", torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class _Layer:
    """A decoder layer's parts as plain functions (no module call per use)."""

    attention_norm: Linear
    #: Queries, keys and values side by side (one row each).
    query_key_value: Linear
    output: Linear
    mlp_norm: Linear
    #: The gate and up projections side by side.
    gate_and_up: Linear
    down: Linear

    @classmethod
    def of(cls, layer: Any) -> _Layer:
        attention, mlp = layer.self_attn, layer.mlp
        return cls(
            _rms_norm(layer.input_layernorm),
            _side_by_side(attention.q_proj, attention.k_proj, attention.v_proj),
            _linear(attention.o_proj),
            _rms_norm(layer.post_attention_layernorm),
            _side_by_side(mlp.gate_proj, mlp.up_proj),
            _linear(mlp.down_proj),
        )


def _side_by_side(*modules: torch.nn.Module) -> Linear:
    """The products of ``modules`` (which read the same input) side by side: one product on their
    shared copy when ``prepare_float32_decoding`` (transposed fp32) or ``pack_bf16_linears``
    (packed bf16) grouped them, else one each."""
    group = getattr(modules[0], "group", None)
    if group is not None and all(type(module) is DecodingLinear and module.group is group for module in modules):
        biases = [module.bias for module in modules]
        if all(bias is None for bias in biases):
            return partial(torch.mm, mat2=group)
        return partial(torch.addmm, torch.cat(cast(list[torch.Tensor], biases)), mat2=group)
    siblings = getattr(modules[0], "siblings", None)
    if isinstance(siblings, PackedSiblings) and all(
        type(module) is PackedLinear and module.siblings is siblings for module in modules
    ):
        return siblings
    calls = [_linear(module) for module in modules]
    return lambda hidden: torch.cat([call(hidden) for call in calls], dim=-1)


def _linear(module: torch.nn.Module) -> Linear:
    """``module``'s product as one operator call: ``Linear``, fp32 transposed for decoding, packed
    bf16 or dynamic int8 ``Linear``."""
    if type(module) is torch.nn.Linear:
        return partial(F.linear, weight=module.weight, bias=module.bias)
    if type(module) is DecodingLinear:
        return module.one_row
    if type(module) is PackedLinear:
        return partial(torch.ops.mkldnn._linear_pointwise, W=module.packed, B=module.bias, attr=module.post_op[0],
                       scalars=[], algorithm=module.post_op[1])
    if type(module) is DynamicQuantizedLinear and module._packed_params.dtype == torch.qint8:
        packed = module._packed_params._packed_params
        return partial(torch.ops.quantized.linear_dynamic, W_prepack=packed, reduce_range=True)
    return module


def _rms_norm(module: Any) -> Linear:
    return partial(F.rms_norm, normalized_shape=module.weight.shape, weight=module.weight, eps=module.variance_epsilon)


def _buffers(cache: Any, capacity: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values of every layer (layers x kv heads x capacity x head dim), the cache's copied in.

    Keys are stored after the rotary embedding, as transformers stores them. The positions not yet
    written hold zeros, not whatever memory held: :class:`GraphedLlamaStep` attends over them with
    weight 0, and 0 times a NaN left in memory would be NaN."""
    first = cache.layers[0].keys
    shape = (len(cache.layers), first.shape[1], capacity, first.shape[3])
    keys = torch.zeros(shape, dtype=first.dtype, device=first.device)
    values = torch.zeros(shape, dtype=first.dtype, device=first.device)
    length = first.shape[2]
    for index, layer in enumerate(cache.layers):
        keys[index, :, :length] = layer.keys[0]
        values[index, :, :length] = layer.values[0]
    return keys, values


def _rotary_table(
    inv_freq: torch.Tensor, capacity: int, dtype: torch.dtype, offset: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosines and signed sines of the rotary angles for positions offset..offset+capacity-1 (row
    ``p`` for cache position ``p``), in ``dtype``.

    The angles are made as transformers makes them (in fp32, then cast to the model's format);
    the sines' first half is negated so that rotating is one multiply-add with the halves swapped
    (see :func:`_rotate`)."""
    device = inv_freq.device
    positions = torch.arange(offset, offset + capacity, dtype=torch.float32, device=device)
    angles = positions[:, None] * inv_freq.float()[None, :]
    doubled = torch.cat((angles, angles), dim=-1)
    half = inv_freq.shape[0]
    signs = torch.cat((-torch.ones(half, device=device), torch.ones(half, device=device)))
    return doubled.cos().to(dtype), (doubled.sin() * signs).to(dtype)


def _rotate(states: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of ``states`` (heads x dim)."""
    turned = states.view(states.shape[0], 2, -1).flip(1).view(states.shape)  # halves swapped
    return torch.addcmul(states * cos, turned, sin)
