"""vlm-notebook's attention: one decoded token's (``attention.attend_one_query``), and many queries'
with no mask (``attention.attend_many_queries``), every query over every key as vision encoders
use it, or causal as a prompt's prefill; and SmolVLM's encoder taking a picture's tiles one at a
time on a CPU."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vlm_notebook import shapes
from vlm_notebook.models import SmolVLM, attention
from vlm_notebook.models._prefix import vision_module

HEADS, KV_HEADS, SIZE, LENGTH = 6, 2, 16, 400  # over MANY_QUERIES, and several causal blocks of queries


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_one_querys_attention_is_exact_attention_rounded_once(dtype: torch.dtype) -> None:
    """Whichever way the step attends (three products for half formats on a CPU), it is the exact
    attention of the rounded inputs, query head h reading key/value head h // 3, to the format's
    rounding."""
    generator = torch.Generator().manual_seed(3)
    heads, kv_heads, size, length = 6, 2, 16, 300
    query = torch.randn(1, heads, 1, size, generator=generator).mul(2).to(dtype)
    keys = torch.randn(kv_heads, length + 10, size, generator=generator).mul(2).to(dtype)[:, :length]
    values = torch.randn(kv_heads, length + 10, size, generator=generator).to(dtype)[:, :length]
    got = attention.attend_one_query(query, keys, values, size**-0.5)
    repeated_keys, repeated_values = (part.double().repeat_interleave(3, dim=0) for part in (keys, values))
    weights = torch.softmax(query.double()[0, :, 0, None] @ repeated_keys.transpose(1, 2) * size**-0.5, dim=-1)
    exact = (weights @ repeated_values).view(1, heads, 1, size)
    assert got.dtype == dtype and got.shape == query.shape
    rounding = {torch.bfloat16: 2**-8, torch.float16: 2**-11, torch.float32: 1e-6}[dtype]
    torch.testing.assert_close(got.double(), exact, rtol=rounding, atol=rounding * float(exact.abs().max()))


def attention_inputs(
    dtype: torch.dtype, kv_heads: int = KV_HEADS
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Queries (2 x 6 heads), keys and values (2 x ``kv_heads``) as transformers passes them: views
    of (batch, positions, heads, dim) tensors, not contiguous per head."""
    generator = torch.Generator().manual_seed(5)

    def part(heads: int, spread: float) -> torch.Tensor:
        values = torch.randn(2, LENGTH, heads, SIZE, generator=generator).mul(spread).to(dtype)
        return values.transpose(1, 2)

    return part(HEADS, 3.0), part(kv_heads, 3.0), part(kv_heads, 1.0)


def exact_attention(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, score_format: torch.dtype, causal: bool
) -> torch.Tensor:
    """float64 attention of the given inputs, query head h reading key/value head h // (heads / kv
    heads) (as transformers repeats them), its scores first rounded to ``score_format``."""
    group = HEADS // keys.shape[1]
    repeated_keys, repeated_values = (part.double().repeat_interleave(group, dim=1) for part in (keys, values))
    scaled = (query * SIZE**-0.5).double()
    scores = (scaled @ repeated_keys.transpose(-1, -2)).to(score_format).double()
    if causal:
        scores.masked_fill_(torch.ones(LENGTH, LENGTH, dtype=torch.bool).triu(1), float("-inf"))
    return torch.softmax(scores, dim=-1) @ repeated_values


@pytest.fixture
def fast_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CPU with bf16 matrix instructions, whatever this one has."""
    monkeypatch.setattr(attention, "has_fast_bf16", lambda: True)


@pytest.mark.parametrize("kv_heads", [KV_HEADS, HEADS], ids=["grouped heads", "a key/value head each"])
@pytest.mark.parametrize("causal", [False, True], ids=["every key", "causal"])
def test_in_bf16_the_scores_are_rounded_once_and_the_rest_is_exact(
    fast_bf16: None, causal: bool, kv_heads: int
) -> None:
    """On a CPU with bf16 instructions: exact attention of the bf16 inputs, but for the scores,
    rounded to bf16 before their softmax, and the bf16 rounding of the weights and the result."""
    query, keys, values = attention_inputs(torch.bfloat16, kv_heads)
    got = attention.attend_many_queries(query, keys, values, SIZE**-0.5, causal)
    assert got.dtype == torch.bfloat16 and got.shape == query.shape
    with_rounded_scores = exact_attention(query, keys, values, torch.bfloat16, causal)
    rounding = 2**-8 * float(with_rounded_scores.abs().max())
    torch.testing.assert_close(got.double(), with_rounded_scores, rtol=0, atol=2 * rounding)
    exact = exact_attention(query, keys, values, torch.float64, causal)
    assert float((got.double() - exact).abs().max()) > 2 * rounding, "the scores' rounding shows against exact"


@pytest.mark.parametrize("causal", [False, True], ids=["every key", "causal"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_elsewhere_it_is_torchs_fused_attention(
    monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype, causal: bool
) -> None:
    """In fp32, and in bf16 on a CPU without bf16 instructions, the fused operator's numbers exactly."""
    monkeypatch.setattr(attention, "has_fast_bf16", lambda: False)
    query, keys, values = attention_inputs(dtype)
    got = attention.attend_many_queries(query, keys, values, SIZE**-0.5, causal)
    fused = F.scaled_dot_product_attention(query, keys, values, scale=SIZE**-0.5, is_causal=causal, enable_gqa=True)
    assert torch.equal(got, fused)


def test_few_queries_go_to_the_fused_operator(fast_bf16: None) -> None:
    query, keys, values = (part[:, :, : attention.MANY_QUERIES - 1] for part in attention_inputs(torch.bfloat16))
    got = attention.attend_many_queries(query, keys, values, SIZE**-0.5, causal=True)
    fused = F.scaled_dot_product_attention(query, keys, values, scale=SIZE**-0.5, is_causal=True, enable_gqa=True)
    assert torch.equal(got, fused)


def a_wide_picture() -> Image.Image:
    scene = shapes.all_scenes()[0]
    return shapes.draw(scene).image.resize((700, 300))


@pytest.mark.timeout(120)
def test_smolvlms_vision_encoder_attends_through_it_in_bf16(fast_bf16: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """SmolVLM in bf16 on a CPU: the vision encoder's attention goes through ``scores_in_bf16``
    (here already for the shipped checkpoint's 64 patches), and the first answer token's logits stay
    within bf16's differences of "sdpa"'s."""
    monkeypatch.setattr(attention, "MANY_QUERIES", 64)
    model = SmolVLM("shapes-smolvlm", dtype="bfloat16")
    model.load()
    encoder = vision_module(model.model)
    assert encoder is not None and encoder.config._attn_implementation == attention.TRANSFORMERS_NAME
    picture = a_wide_picture()
    ours = model._first_logits(picture, "What colour is the shape?").float()
    encoder.set_attn_implementation("sdpa")
    theirs = model._first_logits(picture, "What colour is the shape?").float()
    assert not torch.equal(ours, theirs), "the encoder's attention changed"
    tolerance = 0.02 * float(theirs.abs().max())
    assert torch.allclose(ours, theirs, atol=tolerance, rtol=0), float((ours - theirs).abs().max())
    assert ours.argmax() == theirs.argmax()


@pytest.mark.timeout(120)
def test_on_a_cpu_smolvlm_encodes_a_pictures_tiles_one_at_a_time() -> None:
    """The encoder takes a picture's tiles (the model card's sizes make several) one by one, with the
    numbers of all at once, each tile's patch mask with it."""
    model = SmolVLM("shapes-smolvlm", dtype="float32")
    model.load()
    encoder = vision_module(model.model)
    assert encoder is not None
    batches: list[int] = []
    encoder.embeddings.register_forward_hook(lambda _, args, output: batches.append(len(output)))
    tiles = torch.randn(3, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    patches = torch.ones(3, 8, 8, dtype=torch.bool)
    patches[1, :, 5:] = False  # the middle tile is padded on the right
    with torch.inference_mode():
        one_by_one = encoder(pixel_values=tiles, patch_attention_mask=patches, return_dict=True)
        assert batches == [1, 1, 1]
        all_at_once = type(encoder).forward(encoder, pixel_values=tiles, patch_attention_mask=patches)
    torch.testing.assert_close(one_by_one.last_hidden_state, all_at_once.last_hidden_state, rtol=1e-5, atol=1e-5)


@pytest.mark.timeout(120)
def test_a_long_prompts_prefill_attends_causally_through_it_in_bf16(
    fast_bf16: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SmolVLM's text decoder in bf16 on a CPU: a prompt of ``MANY_QUERIES`` tokens or more goes
    through ``scores_in_bf16``, causal, and its last logits stay within bf16's differences of "sdpa"'s."""
    model = SmolVLM("shapes-smolvlm", dtype="bfloat16")
    model.load()
    decoder, head = model.model.get_decoder(), model.model.get_output_embeddings()
    causal_calls: list[bool] = []
    bf16_scores = attention.scores_in_bf16

    def noted(*args: Any) -> torch.Tensor:
        causal_calls.append(args[-1])
        return bf16_scores(*args)

    monkeypatch.setattr(attention, "scores_in_bf16", noted)
    vocabulary = model.model.config.get_text_config().vocab_size
    prompt = torch.randint(0, vocabulary, (1, attention.MANY_QUERIES + 20), generator=torch.Generator().manual_seed(2))

    def last_logits() -> torch.Tensor:
        with torch.inference_mode():
            return head(decoder(input_ids=prompt).last_hidden_state[:, -1]).float()

    ours = last_logits()
    layers = model.model.config.get_text_config().num_hidden_layers
    assert causal_calls == [True] * layers
    decoder.set_attn_implementation("sdpa")
    theirs = last_logits()
    tolerance = 0.02 * float(theirs.abs().max())
    assert torch.allclose(ours, theirs, atol=tolerance, rtol=0), float((ours - theirs).abs().max())


def test_queries_that_need_gradients_go_to_the_fused_operator(fast_bf16: None) -> None:
    """Training (Moondream's, in any format) keeps the operator that gradients flow through."""
    query, keys, values = (part.detach().requires_grad_() for part in attention_inputs(torch.bfloat16))
    got = attention.attend_many_queries(query, keys, values, SIZE**-0.5)
    got.float().sum().backward()
    assert query.grad is not None and keys.grad is not None
