"""bf16 linear weights packed for oneDNN (a tanh GELU fused into fc1), fp32 decoding weights copied
transposed, and decoding threads chosen by timing (vlm_notebook.cpu)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from holds import hook
from reliability_support import picture

from vlm_notebook import cpu, get_model, shapes
from vlm_notebook.models import SmolVLM

needs_packing = pytest.mark.skipif(not cpu.packs_bf16(), reason="this CPU or torch has no oneDNN bf16 kernels")


@needs_packing
@pytest.mark.parametrize("rows", [1, 7, 300])
def test_a_packed_linear_computes_exactly_what_f_linear_computes(rows: int) -> None:
    torch.manual_seed(rows)
    linear = torch.nn.Linear(576, 1536, dtype=torch.bfloat16)
    x = torch.randn(1, rows, 576, dtype=torch.bfloat16)
    expected = F.linear(x, linear.weight, linear.bias)
    packed = cpu.PackedLinear(linear)
    assert torch.equal(packed(x), expected)
    assert torch.equal(packed.unpacked().weight, linear.weight)


@needs_packing
def test_model_code_that_reads_a_linears_weight_learns_its_format_device_and_shape() -> None:
    """Gemma 4's patch embedder casts its pixels to ``input_proj.weight.dtype``."""
    linear = torch.nn.Linear(192, 128, bias=False, dtype=torch.bfloat16)
    packed = cpu.PackedLinear(linear)
    assert (packed.weight.dtype, packed.weight.device, packed.weight.shape) == (
        torch.bfloat16, torch.device("cpu"), linear.weight.shape
    )


@needs_packing
@pytest.mark.timeout(300)
def test_the_shipped_gemma4_in_bf16_is_packed_and_answers_as_unpacked() -> None:
    packed, plain = (get_model("shapes-gemma4", dtype="bfloat16").load() for _ in range(2))
    assert isinstance(packed.model.model.vision_tower.patch_embedder.input_proj, cpu.PackedLinear)
    cpu.unpack_linears(plain.model)
    for scene in shapes.all_scenes()[::9]:
        image = shapes.draw(scene).image
        assert packed.caption(image) == plain.caption(image)


@needs_packing
def test_packing_replaces_the_bf16_linears_and_unpacking_brings_them_back() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4)).to(torch.bfloat16)
    fp32_layer = torch.nn.Linear(4, 4)
    model.append(fp32_layer)
    x = torch.randn(3, 8, dtype=torch.bfloat16)
    with torch.inference_mode():
        before = model[:3](x)
        assert cpu.pack_bf16_linears(model) == 2  # the fp32 layer is left as it is
        assert [type(layer) for layer in model] == [cpu.PackedLinear, torch.nn.GELU, cpu.PackedLinear, torch.nn.Linear]
        assert torch.equal(model[:3](x), before)
        assert cpu.unpack_linears(model) == 2
        assert all(type(layer) is not cpu.PackedLinear for layer in model)
        assert torch.equal(model[:3](x), before)


@pytest.mark.parametrize("bias", [True, False])
def test_a_decoding_linear_computes_one_row_within_rounding_and_several_rows_exactly(bias: bool) -> None:
    torch.manual_seed(int(bias))
    linear = torch.nn.Linear(576, 1536, bias=bias)
    copied = cpu.DecodingLinear(linear)
    with torch.inference_mode():
        one = torch.randn(1, 1, 576)
        torch.testing.assert_close(copied(one), F.linear(one, linear.weight, linear.bias), rtol=1e-5, atol=1e-5)
        several = torch.randn(1, 7, 576)
        assert torch.equal(copied(several), F.linear(several, linear.weight, linear.bias))
    assert copied.unpacked().weight is linear.weight and copied.unpacked().bias is linear.bias


def test_only_the_decoding_parts_widening_linears_are_copied_and_unpacking_brings_them_back() -> None:
    vision, head = torch.nn.Linear(8, 8), torch.nn.Linear(4, 16)
    text = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 4))  # the second narrows: left alone
    model = torch.nn.ModuleDict({"vision": vision, "text": text, "head": head})
    assert cpu.prepare_float32_decoding(model, (model["text"], model["head"])) == 2
    assert [type(model["vision"]), *map(type, model["text"]), type(model["head"])] == [
        torch.nn.Linear, cpu.DecodingLinear, torch.nn.Linear, cpu.DecodingLinear
    ]
    assert cpu.unpack_linears(model) == 2
    assert type(model["head"]) is torch.nn.Linear and model["head"].weight is head.weight


needs_onednn = pytest.mark.skipif(not cpu.packs_float32(), reason="this torch has no oneDNN packing operators")


@needs_onednn
def test_fp32_linears_outside_the_decoding_parts_are_packed_for_onednn_and_compute_within_rounding() -> None:
    torch.manual_seed(0)
    vision, text = torch.nn.Linear(768, 3072), torch.nn.Linear(8, 8)
    model = torch.nn.ModuleDict({"vision": vision, "text": text})
    x = torch.randn(1, 1024, 768)
    with torch.inference_mode():
        expected = vision(x)
        assert cpu.pack_float32_encoders(model, (model["text"],)) == 1
        assert (type(model["vision"]), type(model["text"])) == (cpu.PackedLinear, torch.nn.Linear)
        torch.testing.assert_close(model["vision"](x), expected, rtol=1e-5, atol=1e-5)
        assert cpu.unpack_linears(model) == 1
        assert torch.equal(model["vision"].weight, vision.weight)


def test_siblings_that_read_the_same_input_share_one_copy_and_each_computes_its_own_product() -> None:
    torch.manual_seed(3)
    attention = torch.nn.Module()
    attention.q_proj, attention.k_proj, attention.v_proj = (torch.nn.Linear(64, n, bias=False) for n in (64, 16, 16))
    plain = [attention.q_proj, attention.k_proj, attention.v_proj]
    assert cpu.prepare_float32_decoding(attention, (attention,)) == 3
    copied = [attention.q_proj, attention.k_proj, attention.v_proj]
    assert all(type(layer) is cpu.DecodingLinear and layer.group is copied[0].group for layer in copied)
    assert copied[0].group is not None and copied[0].group.shape == (64, 96)
    x = torch.randn(1, 1, 64)
    with torch.inference_mode():
        for before, after in zip(plain, copied, strict=True):
            torch.testing.assert_close(after(x), before(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(torch.mm(x[0], copied[0].group), torch.cat([layer(x[0]) for layer in plain], -1))


@needs_packing
@pytest.mark.parametrize("bias", [True, False])
def test_packed_bf16_siblings_in_a_decoding_part_share_one_product_of_their_weights_side_by_side(bias: bool) -> None:
    torch.manual_seed(4)
    attention = torch.nn.Module()
    attention.q_proj, attention.k_proj, attention.v_proj = (
        torch.nn.Linear(64, n, bias=bias, dtype=torch.bfloat16) for n in (64, 16, 16)
    )
    plain = [attention.q_proj, attention.k_proj, attention.v_proj]
    assert cpu.pack_bf16_linears(attention, (attention,)) == 3
    packed = [attention.q_proj, attention.k_proj, attention.v_proj]
    siblings = packed[0].siblings
    assert all(type(layer) is cpu.PackedLinear and layer.siblings is siblings for layer in packed)
    assert siblings is not None and siblings.packed.shape == (96, 64)
    x = torch.randn(1, 64, dtype=torch.bfloat16)
    with torch.inference_mode():
        expected = torch.cat([layer(x) for layer in plain], -1)
        assert torch.equal(torch.cat([layer(x) for layer in packed], -1), expected)
        torch.testing.assert_close(siblings(x), expected)
        assert cpu.unpack_linears(attention) == 3
    assert all(type(layer) is torch.nn.Linear for layer in (attention.q_proj, attention.k_proj, attention.v_proj))


@needs_packing
def test_bf16_siblings_outside_the_decoding_parts_or_too_large_for_memory_get_no_copy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def packed_attention(decoding: bool) -> list[cpu.PackedLinear]:
        attention = torch.nn.Module()
        attention.q_proj, attention.k_proj, attention.v_proj = (
            torch.nn.Linear(256, 256, dtype=torch.bfloat16) for _ in range(3)
        )
        cpu.pack_bf16_linears(attention, (attention,) if decoding else ())
        return [attention.q_proj, attention.k_proj, attention.v_proj]

    assert all(layer.siblings is None for layer in packed_attention(decoding=False))
    monkeypatch.setattr(cpu, "physical_memory", lambda: 1 << 20)  # 1 MB: the copy would not fit
    assert all(layer.siblings is None for layer in packed_attention(decoding=True))


def test_decoding_weights_too_large_for_the_machines_memory_are_not_copied(monkeypatch: pytest.MonkeyPatch) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(256, 256))
    monkeypatch.setattr(cpu, "physical_memory", lambda: 1 << 20)  # 1 MB: the copy would not fit
    assert cpu.prepare_float32_decoding(model, (model,)) == 0
    monkeypatch.setattr(cpu, "physical_memory", lambda: None)  # a system that does not say
    assert cpu.prepare_float32_decoding(model, (model,)) == 0
    assert type(model[0]) is torch.nn.Linear


@pytest.mark.timeout(300)
def test_the_shipped_smolvlm_in_fp32_decodes_from_transposed_copies_and_answers_as_without() -> None:
    copied = SmolVLM("shapes-smolvlm", dtype="float32").load()
    assert isinstance(copied, SmolVLM) and isinstance(copied.model.lm_head, cpu.DecodingLinear)
    vision = list(copied.model.model.vision_model.modules())
    assert not any(isinstance(module, cpu.DecodingLinear) for module in vision)
    assert any(isinstance(module, cpu.PackedLinear) for module in vision) == cpu.packs_float32()
    assert_answers_as_unpacked(copied, "float32")


@needs_packing
@pytest.mark.timeout(300)
def test_the_shipped_smolvlm_in_bf16_is_packed_and_answers_as_unpacked() -> None:
    packed = SmolVLM("shapes-smolvlm", dtype="bfloat16").load()
    assert isinstance(packed, SmolVLM) and isinstance(packed.model.lm_head, cpu.PackedLinear)
    attention = packed.model.model.text_model.layers[0].self_attn
    assert isinstance(attention.q_proj, cpu.PackedLinear) and attention.q_proj.siblings is not None
    assert_answers_as_unpacked(packed, "bfloat16")


def assert_answers_as_unpacked(fitted: SmolVLM, dtype: str) -> None:
    """``fitted`` answers every question about every ninth scene as the same checkpoint unpacked."""
    plain = SmolVLM("shapes-smolvlm", dtype=dtype).load()
    assert isinstance(plain, SmolVLM)
    cpu.unpack_linears(plain.model)
    for scene in shapes.all_scenes()[::9]:
        for question, _ in shapes.questions(scene):
            assert fitted.query(picture(scene), question) == plain.query(picture(scene), question)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeClock]:
    fake = FakeClock()
    monkeypatch.setattr(cpu.time, "perf_counter", fake)
    before = torch.get_num_threads()
    yield fake
    torch.set_num_threads(before)


@pytest.mark.parametrize(("seconds_on_two", "seconds_on_one", "kept"), [(0.01, 0.02, 2), (0.05, 0.01, 1)])
def test_decoding_keeps_the_thread_count_whose_steps_were_faster(
    clock: FakeClock, seconds_on_two: float, seconds_on_one: float, kept: int
) -> None:
    threads = cpu.DecodeThreads(cpu.ThreadPolicy(prefill=2, decode=2, measure_decode=True))
    used = []
    for _ in range(8):
        threads()
        used.append(torch.get_num_threads())
        clock.now += seconds_on_two if used[-1] == 2 else seconds_on_one
    assert used == [2, 2, 1, 1] + [kept] * 4 and threads.chosen == kept


def test_a_models_next_answers_keep_its_measured_count_and_every_eighth_measures_again(clock: FakeClock) -> None:
    policy = cpu.ThreadPolicy(prefill=2, decode=2, measure_decode=True)
    choice = cpu.DecodeChoice()

    def answer(on_policy: cpu.ThreadPolicy = policy) -> list[int]:
        threads = cpu.DecodeThreads(on_policy, choice)
        used = []
        for _ in range(6):
            threads()
            used.append(torch.get_num_threads())
            clock.now += 0.05 if used[-1] == 2 else 0.01  # one thread faster: a busy machine
        return used

    assert answer() == [2, 2, 1, 1, 1, 1]
    assert [answer() for _ in range(cpu.MEASURE_EVERY - 1)] == [[1] * 6] * (cpu.MEASURE_EVERY - 1)
    assert answer()[:4] == [2, 2, 1, 1]
    assert answer(cpu.ThreadPolicy(prefill=2, decode=2, measure_decode=True))[:4] == [2, 2, 1, 1]  # a policy set anew


def test_a_decode_thread_count_set_by_hand_is_used_without_measuring(clock: FakeClock) -> None:
    threads = cpu.DecodeThreads(cpu.ThreadPolicy(prefill=2, decode=2))
    used = []
    for _ in range(5):
        threads()
        used.append(torch.get_num_threads())
    assert used == [2] * 5 and threads.chosen == 2


@pytest.mark.usefixtures("thread_policy_restored")
def test_set_thread_policy_turns_measuring_off_for_a_decode_count_given() -> None:
    cpu.set_thread_policy(prefill=2, decode=2, measure_decode=True)
    assert cpu.set_thread_policy(prefill=1).measure_decode
    assert not cpu.set_thread_policy(decode=2).measure_decode


@pytest.mark.timeout(120)
@pytest.mark.usefixtures("thread_policy_restored")
def test_a_generation_tries_both_thread_counts_then_keeps_one_for_the_next(shapes_smolvlm: SmolVLM) -> None:
    threads: list[int] = []  # torch's threads at each use of the output layer: once per forward pass
    cpu.set_thread_policy(prefill=2, decode=2, measure_decode=True)
    with hook(shapes_smolvlm.model.lm_head, lambda module, args: threads.append(torch.get_num_threads())):
        shapes_smolvlm.query(picture(), "What colour is the shape?", max_new_tokens=1)  # the picture's work
        threads.clear()
        shapes_smolvlm.caption(picture())
        decodes = threads[1:]  # after the caption's prompt
        threads.clear()
        shapes_smolvlm.caption(picture())
    assert decodes[:4] == [2, 2, 1, 1] and len(set(decodes[4:])) == 1
    assert threads[1:] == [decodes[-1]] * len(decodes)  # the next answer measures nothing


class TanhGeluMLP(torch.nn.Module):
    """The shape of transformers' SigLIP MLP and Moondream's: fc1, an activation module, fc2."""

    def __init__(self, activation: torch.nn.Module):
        super().__init__()
        self.fc1, self.activation_fn, self.fc2 = torch.nn.Linear(16, 64), activation, torch.nn.Linear(64, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation_fn(self.fc1(x)))  # type: ignore[no-any-return]


@needs_packing
@pytest.mark.parametrize("activation", ["torch", "transformers"])
def test_a_tanh_gelu_after_fc1_runs_inside_its_product_and_comes_back_when_unpacked(activation: str) -> None:
    from transformers.activations import GELUTanh

    torch.manual_seed(0)
    mlp = TanhGeluMLP(torch.nn.GELU(approximate="tanh") if activation == "torch" else GELUTanh()).to(torch.bfloat16)
    x = torch.randn(5, 16, dtype=torch.bfloat16)
    with torch.inference_mode():
        before = mlp(x).float()
        cpu.pack_bf16_linears(mlp)
        assert isinstance(mlp.fc1, cpu.PackedLinear) and mlp.fc1.gelu
        assert isinstance(mlp.activation_fn, torch.nn.Identity)
        fused = mlp(x).float()  # one rounding to bf16 fewer: close, not equal
        assert (fused - before).abs().max() <= 0.02 * before.abs().max()
        cpu.unpack_linears(mlp)
        assert isinstance(mlp.activation_fn, torch.nn.GELU) and type(mlp.fc1) is torch.nn.Linear
        assert torch.equal(mlp(x).float(), before)


@needs_packing
def test_other_activations_are_left_alone() -> None:
    mlp = TanhGeluMLP(torch.nn.GELU()).to(torch.bfloat16)  # the exact GELU: oneDNN's tanh one would differ
    cpu.pack_bf16_linears(mlp)
    assert isinstance(mlp.fc1, cpu.PackedLinear) and not mlp.fc1.gelu and isinstance(mlp.activation_fn, torch.nn.GELU)
