"""Many queries' attention as one oneDNN partition (``onednn_attention.attend``): what it computes,
that the same inputs give the same numbers whatever came before, that it leaves TorchScript's
settings as it found them, and that where it cannot fuse, the caller's own attention runs."""

from __future__ import annotations

import threading

import pytest
import torch

from vlm_notebook.cpu import has_fast_bf16
from vlm_notebook.models import attention, onednn_attention

HEADS, SIZE, LENGTH = 4, 16, 300

needs_bf16_instructions = pytest.mark.skipif(
    not has_fast_bf16(), reason="this CPU has no bf16 matrix instructions, where the product never attends this way"
)


@pytest.fixture(autouse=True)
def no_shapes_traced_yet(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts as a new process would, with no shape traced (nor any of the bounded number
    of shapes used up by other tests)."""
    monkeypatch.setattr(onednn_attention, "_fused", {})


def vision_inputs(seed: int, length: int = LENGTH) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """bf16 queries, keys and values (2 x heads x length x size) as a vision encoder's attention gets
    them from transformers: views of one (batch, positions, 3, heads, size) tensor."""
    generator = torch.Generator().manual_seed(seed)
    packed = torch.randn(2, length, 3, HEADS, SIZE, generator=generator).mul(3).to(torch.bfloat16)
    query, keys, values = (packed[:, :, part].transpose(1, 2) for part in range(3))
    return query, keys, values.div(3)


def exact_with_rounded_scores(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """float64 attention of the inputs, their scores first rounded to bf16."""
    scores = (query.double() @ keys.double().transpose(-1, -2) * SIZE**-0.5).to(torch.bfloat16).double()
    return torch.softmax(scores, dim=-1) @ values.double()


@needs_bf16_instructions
@pytest.mark.timeout(60)
def test_it_is_attention_with_the_scores_rounded_once() -> None:
    query, keys, values = vision_inputs(seed=1)
    with torch.inference_mode():
        got = onednn_attention.attend(query, keys, values, SIZE**-0.5)
    assert got is not None, "oneDNN fused the attention on this CPU"
    assert got.shape == query.shape and got.dtype == torch.bfloat16
    expected = exact_with_rounded_scores(query, keys, values)
    rounding = 2**-8 * float(expected.abs().max())
    torch.testing.assert_close(got.double(), expected, rtol=0, atol=2 * rounding)


@needs_bf16_instructions
@pytest.mark.timeout(60)
def test_the_same_inputs_give_the_same_numbers_whatever_came_before() -> None:
    """The first call of a shape (traced and optimised then) and later ones, other shapes and
    layouts between them: the same numbers each time, and each layout right."""
    query, keys, values = vision_inputs(seed=2, length=LENGTH + 7)
    first = onednn_attention.attend(query, keys, values, SIZE**-0.5)
    other = vision_inputs(seed=3, length=LENGTH + 9)
    assert onednn_attention.attend(*other, SIZE**-0.5) is not None
    contiguous = [part.contiguous() for part in (query, keys, values)]
    in_another_layout = onednn_attention.attend(*contiguous, SIZE**-0.5)
    again = onednn_attention.attend(query, keys, values, SIZE**-0.5)
    assert first is not None and again is not None and in_another_layout is not None
    assert torch.equal(first, again)
    expected = exact_with_rounded_scores(query, keys, values)
    rounding = 2**-8 * float(expected.abs().max())
    torch.testing.assert_close(in_another_layout.double(), expected, rtol=0, atol=2 * rounding)


def qwen2vl_vision_inputs(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inputs laid out as transformers' Qwen2-VL vision attention passes them: a batch of one added
    in front of (heads, positions, size) views, the queries and keys of their own tensors (after the
    rotary embedding), the values a view of the packed projection."""
    generator = torch.Generator().manual_seed(seed)
    rotated = [torch.randn(LENGTH, HEADS, SIZE, generator=generator).mul(3).bfloat16() for _ in range(2)]
    packed = torch.randn(LENGTH, 3, HEADS, SIZE, generator=generator).bfloat16()
    query, keys = (part.transpose(0, 1).unsqueeze(0) for part in rotated)
    return query, keys, packed[:, 2].transpose(0, 1).unsqueeze(0)


@needs_bf16_instructions
@pytest.mark.timeout(60)
def test_any_layout_gives_the_attention_of_its_values() -> None:
    """Qwen2-VL's layout (which the fusion gets wrong when handed as it is), then other layouts of
    the same shape in the same process."""
    query, keys, values = qwen2vl_vision_inputs(seed=9)
    layouts = {
        "Qwen2-VL's": (query, keys, values),
        "each contiguous": tuple(part.contiguous() for part in (query, keys, values)),
        "(positions, heads, size) views": tuple(part[0].transpose(0, 1).contiguous().transpose(0, 1)[None]
                                                for part in (query, keys, values)),
    }
    expected = exact_with_rounded_scores(query, keys, values)
    for layout, parts in layouts.items():
        got = onednn_attention.attend(*parts, SIZE**-0.5)
        assert got is not None
        error = float((got.double() - expected).abs().max())
        assert error <= 2 * 2**-8 * float(expected.abs().max()), f"{layout}: {error}"


@pytest.mark.parametrize("was_on", [False, True])
@pytest.mark.timeout(60)
def test_torchscripts_onednn_fusion_is_left_as_it_was(was_on: bool) -> None:
    torch.jit.enable_onednn_fusion(was_on)
    try:
        onednn_attention.attend(*vision_inputs(seed=4, length=LENGTH + 11 + was_on), SIZE**-0.5)
        assert torch.jit.onednn_fusion_enabled() is was_on
    finally:
        torch.jit.enable_onednn_fusion(False)


@needs_bf16_instructions
@pytest.mark.timeout(60)
def test_threads_meeting_a_new_shape_together_get_the_numbers_of_one() -> None:
    query, keys, values = vision_inputs(seed=5, length=LENGTH + 13)
    results: list[torch.Tensor | None] = []
    threads = [
        threading.Thread(target=lambda: results.append(onednn_attention.attend(query, keys, values, SIZE**-0.5)))
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    alone = onednn_attention.attend(query, keys, values, SIZE**-0.5)
    assert len(results) == 2 and alone is not None
    assert all(result is not None and torch.equal(result, alone) for result in results)


@needs_bf16_instructions
@pytest.mark.timeout(60)
def test_a_process_traces_a_bounded_number_of_shapes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shapes met after ``MOST_SHAPES`` attend as ``scores_in_bf16``, then too; those traced before
    stay fused, with the same numbers."""
    monkeypatch.setattr(onednn_attention, "MOST_SHAPES", 2)
    inputs = [vision_inputs(seed=6, length=LENGTH + 20 + extra) for extra in range(3)]
    first = [onednn_attention.attend(*parts, SIZE**-0.5) for parts in inputs]
    assert first[0] is not None and first[1] is not None and first[2] is None
    for _ in range(2):
        late = attention.attend_in_bf16(*inputs[2], SIZE**-0.5)
        assert torch.equal(late, attention.scores_in_bf16(*inputs[2], SIZE**-0.5))
    again = onednn_attention.attend(*inputs[0], SIZE**-0.5)
    assert again is not None and torch.equal(again, first[0])
    assert len(onednn_attention._fused) == 2


def test_what_it_does_not_fuse_it_hands_back() -> None:
    """Grouped key/value heads, inputs that need gradients, and other ranks: None, for the caller's
    own attention."""
    query, keys, values = vision_inputs(seed=7)
    assert onednn_attention.attend(query, keys[:, :2], values[:, :2], SIZE**-0.5) is None
    needing = query.detach().requires_grad_()
    assert onednn_attention.attend(needing, keys, values, SIZE**-0.5) is None
    assert onednn_attention.attend(query[0], keys[0], values[0], SIZE**-0.5) is None


@pytest.mark.timeout(60)
def test_where_tracing_fails_attention_in_bf16_is_the_scores_in_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    """A torch whose tracing fails for this attention: None, and ``attend_in_bf16`` gives
    ``scores_in_bf16``'s numbers, from then on for that shape too."""

    def failing(*args: object, **kwargs: object) -> None:
        raise RuntimeError("no tracing here")

    monkeypatch.setattr(torch.jit, "trace", failing)
    query, keys, values = vision_inputs(seed=8, length=LENGTH + 30)
    for _ in range(2):
        assert onednn_attention.attend(query, keys, values, SIZE**-0.5) is None
        got = attention.attend_in_bf16(query, keys, values, SIZE**-0.5)
        assert torch.equal(got, attention.scores_in_bf16(query, keys, values, SIZE**-0.5))
