"""Where a model runs and in what number format: ``device=`` and ``dtype=`` on every family.

This machine has no GPU: "auto" must pick the CPU and answer exactly as before, and a GPU asked
for by name must be refused at once with what the machine has. tests/test_gpu.py runs the same
families on CUDA where there is one.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from transformers import DynamicCache, LlamaConfig, LlamaModel

from vlm_notebook import cpu, get_model, runtime, shapes
from vlm_notebook.errors import DeviceError, RequestError
from vlm_notebook.models import Moondream, Qwen2VL, SmolVLM
from vlm_notebook.models.llama_step import GraphedLlamaStep, _buffers, _rotary_table
from vlm_notebook.models.moondream import MoondreamConfig
from vlm_notebook.models.moondream.cache import KVCache
from vlm_notebook.models.moondream.inference import GraphedStep
from vlm_notebook.models.moondream.network import build_on_meta
from vlm_notebook.registry import CHECKPOINTS_DIR
from vlm_notebook.runtime import Runtime, choose_runtime

RED_CIRCLE = shapes.Scene("circle", "red", "white")
FAMILIES = {"shapes-smolvlm": SmolVLM, "shapes-qwen2vl": Qwen2VL, "shapes-moondream": Moondream}
no_gpu = pytest.mark.skipif(torch.cuda.is_available() or torch.backends.mps.is_available(), reason="a GPU is here")


@no_gpu
@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", FAMILIES)
def test_auto_picks_the_cpu_here_and_the_shipped_answers_stay_exact(name: str) -> None:
    model = get_model(name)
    picture = shapes.draw(RED_CIRCLE).image
    stream = model.query(picture, "What colour is the shape?", stream=True)
    assert "".join(stream) == "Red."
    assert model.device == "cpu" and stream.stats.device == "cpu"
    assert model.dtype == stream.stats.dtype == runtime.dtype_name_for_cpu()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("name", FAMILIES)
def test_every_family_answers_in_every_number_format_as_in_float32(name: str, dtype: str) -> None:
    """The shipped checkpoints' exact answers (pinned in fp32 by the family tests) hold in bf16 and fp16."""
    scenes = shapes.all_scenes()[::9]
    answers = {}
    for number_format in ("float32", dtype):
        model = FAMILIES[name](name, device="cpu", dtype=number_format)
        answers[number_format] = [
            [model.caption(picture), *(model.query(picture, question) for question, _ in shapes.questions(scene))]
            for picture, scene in ((shapes.draw(scene).image, scene) for scene in scenes)
        ]
        assert model.dtype == number_format
    assert answers[dtype] == answers["float32"]


@no_gpu
@pytest.mark.timeout(60)
@pytest.mark.parametrize("device", ["cuda", "cuda:1", "mps"])
@pytest.mark.parametrize("name", FAMILIES)
def test_a_gpu_that_is_not_here_is_refused_when_the_model_is_made(name: str, device: str) -> None:
    with pytest.raises(DeviceError, match="devices present: cpu") as refused:
        FAMILIES[name](name, device=device)
    assert "device='auto'" in str(refused.value)


@pytest.mark.parametrize(("device", "dtype"), [("tpu", "auto"), ("cpu", "int4"), (3, "auto"), ("cpu", None)])
def test_an_unknown_device_or_dtype_is_refused_with_the_choices(device: object, dtype: object) -> None:
    with pytest.raises(RequestError, match="choose one of"):
        choose_runtime(device, dtype)


def test_int8_keeps_the_rest_in_float32_and_refuses_another_format() -> None:
    assert choose_runtime("cpu", "auto", int8=True) == Runtime(torch.device("cpu"), torch.float32, int8=True)
    assert choose_runtime("cpu", "auto", int8=True).dtype_name == "int8"
    with pytest.raises(RequestError, match="float32"):
        choose_runtime("cpu", "bfloat16", int8=True)


@pytest.mark.parametrize(("fast_bf16", "expected"), [(True, torch.bfloat16), (False, torch.float32)])
def test_the_cpu_format_follows_the_cpus_bf16_instructions(
    monkeypatch: pytest.MonkeyPatch, fast_bf16: bool, expected: torch.dtype
) -> None:
    monkeypatch.delenv(runtime.CPU_DTYPE_VARIABLE, raising=False)
    monkeypatch.setattr(runtime, "has_fast_bf16", lambda: fast_bf16)
    assert runtime.auto_dtype(torch.device("cpu")) == expected


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ("fpu sse2 avx avx2 fma", torch.float32),  # AVX2 only: bf16 products tens of times slower
        ("avx2 avx512f avx512_bf16 avx512_vnni", torch.bfloat16),  # Zen 4/5
        ("avx2 avx512f amx_tile amx_bf16 amx_int8", torch.bfloat16),  # Xeon with AMX
    ],
)
def test_the_cpu_flags_read_at_run_time_decide_the_default_format(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flags: str, expected: torch.dtype
) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
    monkeypatch.delenv(runtime.CPU_DTYPE_VARIABLE, raising=False)
    monkeypatch.setattr(cpu, "_CPUINFO", info)
    cpu.has_fast_bf16.cache_clear()
    cpu.packs_bf16.cache_clear()
    try:
        assert choose_runtime("cpu", "auto").dtype == expected
        assert cpu.matrix_flags() == [flag for flag in cpu.MATRIX_FLAGS if flag in flags.split()]
        if expected == torch.float32:
            assert not cpu.packs_bf16()  # and nothing is packed for bf16 kernels the CPU lacks
    finally:
        cpu.has_fast_bf16.cache_clear()
        cpu.packs_bf16.cache_clear()


def test_the_cpu_format_can_be_set_for_the_process_and_a_bad_value_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "has_fast_bf16", lambda: True)
    monkeypatch.setenv(runtime.CPU_DTYPE_VARIABLE, "float32")
    assert runtime.auto_dtype(torch.device("cpu")) == torch.float32
    monkeypatch.setenv(runtime.CPU_DTYPE_VARIABLE, "fp8")
    with pytest.raises(RequestError, match=runtime.CPU_DTYPE_VARIABLE):
        runtime.auto_dtype(torch.device("cpu"))


def test_a_remote_model_leaves_the_device_to_its_server() -> None:
    model = get_model("remote:some-model@http://127.0.0.1:9/v1")
    assert model.device is None and model.dtype is None
    with pytest.raises(RequestError, match="runs on its server"):
        get_model("remote:some-model@http://127.0.0.1:9/v1", device="cuda")


# -- every tensor made while answering follows the runtime (checked on the meta device) ----------


def test_inputs_are_placed_on_the_device_and_pixels_take_the_number_format() -> None:
    placed = Runtime(torch.device("meta"), torch.bfloat16).place(
        {"input_ids": torch.ones(1, 3, dtype=torch.long), "pixel_values": torch.zeros(1, 3, 4, 4), "n": 2}
    )
    assert placed["input_ids"].device.type == placed["pixel_values"].device.type == "meta"
    assert placed["input_ids"].dtype == torch.long and placed["pixel_values"].dtype == torch.bfloat16
    assert placed["n"] == 2


@pytest.mark.usefixtures("thread_policy_restored")
def test_threads_are_the_cpu_runtimes_business_and_no_other_runtime_touches_them() -> None:
    before = torch.get_num_threads()
    cpu.set_thread_policy(prefill=before + 1, decode=before + 2)
    with Runtime(torch.device("meta"), torch.float32).phases() as to_decoding:  # a device without CPU threads
        to_decoding()
        assert torch.get_num_threads() == before
    with runtime.CPU_FLOAT32.phases() as to_decoding:
        assert torch.get_num_threads() == before + 1, "the prefill's threads"
        to_decoding()
        assert torch.get_num_threads() == before + 2, "the decoding threads"
    assert torch.get_num_threads() == before, "put back after"


def test_the_decoding_loops_buffers_and_rotary_table_follow_the_cache_and_model() -> None:
    class Layer:
        keys = values = torch.empty(1, 3, 5, 8, device="meta", dtype=torch.bfloat16)

    class Cache:
        layers: ClassVar[list[Layer]] = [Layer(), Layer()]

    keys, values = _buffers(Cache(), capacity=9)
    assert keys.device.type == values.device.type == "meta" and keys.dtype == torch.bfloat16
    cos, sin = _rotary_table(torch.ones(4, device="meta"), 9, torch.bfloat16)
    assert cos.device.type == sin.device.type == "meta" and cos.dtype == torch.bfloat16


def test_the_gpus_fixed_shape_decoding_step_makes_its_tensors_on_the_models_device() -> None:
    config = LlamaConfig(
        vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2,
    )
    with torch.device("meta"):
        text_model, head = LlamaModel(config), torch.nn.Linear(16, 32, bias=False)
    with torch.inference_mode():
        cache = DynamicCache(config=config)
        text_model(input_ids=torch.ones(1, 3, dtype=torch.long, device="meta"), cache=cache, use_cache=True)
        logits = GraphedLlamaStep(text_model, head, cache, capacity=6)(1)
    assert logits.device.type == "meta" and logits.shape == (1, 32)


def test_moondreams_fixed_shape_decoding_step_makes_its_tensors_on_the_models_device() -> None:
    config = MoondreamConfig()
    text = config.text
    network = build_on_meta(config).model  # the published sizes, no memory
    cache = KVCache(text.n_layers, text.n_kv_heads, text.head_dim, 6, torch.device("meta"))
    cache.advance(3)  # as after a prefill
    with torch.inference_mode():
        logits = GraphedStep(network, cache)(1)
    assert logits.device.type == "meta" and logits.shape == (1, 1, text.vocab_size) and cache.length == 4


def test_a_model_too_big_for_the_gpus_free_memory_is_refused_before_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check reads the weights' size from the safetensors headers (the GPU tests load on a real GPU)."""
    files = [CHECKPOINTS_DIR / "shapes-smolvlm" / "model.safetensors"]
    gpu = Runtime(torch.device("cuda"), torch.bfloat16)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (1_000_000, 80 * 2**30))
    with pytest.raises(DeviceError, match=r"only 0\.0 GiB of its 80\.0 GiB are free.*device='cpu'"):
        runtime.check_fits(gpu, files, "'shapes-smolvlm'")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (2**30, 80 * 2**30))
    runtime.check_fits(gpu, files, "'shapes-smolvlm'")  # 0.9 M numbers in bf16 fit in 1 GiB
    runtime.check_fits(gpu, [files[0].with_name("absent.safetensors")], "absent")  # loading says what is wrong
    runtime.check_fits(Runtime(torch.device("cpu"), torch.float32), files, "on the CPU: never refused")


@pytest.fixture
def nan_once_from_layers_of_width(request: pytest.FixtureRequest) -> Iterator[list[int]]:
    """The first output of any layer as wide as the vocabulary (``request.param``) is made NaN:
    what fp16 on an Apple GPU has done to these families' first logits."""
    poisoned: list[int] = []

    def hook(module: torch.nn.Module, args: object, output: object) -> object:
        if not poisoned and isinstance(output, torch.Tensor) and output.shape[-1] == request.param:
            poisoned.append(1)
            return torch.full_like(output, float("nan"))
        return output

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        yield poisoned
    finally:
        handle.remove()


VOCABULARY = {name: json.loads((CHECKPOINTS_DIR / name / "config.json").read_text()) for name in FAMILIES}


def _vocabulary(name: str) -> int:
    config = VOCABULARY[name]
    found = config.get("text_config", {}).get("vocab_size") or config.get("vocab_size")
    return int(found or config["config"]["text"]["vocab_size"])


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("name", "nan_once_from_layers_of_width"), [(name, _vocabulary(name)) for name in FAMILIES],
    indirect=["nan_once_from_layers_of_width"],
)
def test_nan_in_the_half_format_auto_chose_falls_back_to_float32_with_a_warning(
    name: str, nan_once_from_layers_of_width: list[int], monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv(runtime.CPU_DTYPE_VARIABLE, "bfloat16")  # what "auto" picks on a CPU with bf16
    model = get_model(name)
    assert model.runtime.half_by_auto and model.dtype == "bfloat16"
    with caplog.at_level("WARNING", logger="vlm_notebook"):
        model.load()
    assert nan_once_from_layers_of_width, "the check ran the model"
    assert model.dtype == "float32" and not model.runtime.half_by_auto
    assert "gave NaN in bfloat16 on cpu: it runs in float32 there instead" in caplog.text
    picture = shapes.draw(RED_CIRCLE).image
    assert model.query(picture, "What colour is the shape?") == "Red.", "answers as the fp32 model does"


def test_only_a_half_format_that_auto_chose_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(runtime.CPU_DTYPE_VARIABLE, "bfloat16")
    assert choose_runtime("cpu", "auto").half_by_auto
    assert not choose_runtime("cpu", "bfloat16").half_by_auto, "asked for by name: kept as asked"
    monkeypatch.setenv(runtime.CPU_DTYPE_VARIABLE, "float32")
    assert not choose_runtime("cpu", "auto").half_by_auto
    finite = Runtime(torch.device("cpu"), torch.bfloat16, half_by_auto=True)
    assert runtime.float32_if_not_finite(finite, torch.nn.Linear(2, 2), torch.zeros(1, 3), "m") is finite
