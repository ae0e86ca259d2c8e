"""SmolVLM's and Qwen2-VL's own decoding step (``vlm_notebook.models.llama_step``, run by
``vlm_notebook.engine``) against transformers' modules and ``generate``, and the engine's token sampler."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pytest
import torch
from transformers import DynamicCache

from vlm_notebook import shapes
from vlm_notebook.engine import Sampler
from vlm_notebook.models import Qwen2VL, SmolVLM, graphs
from vlm_notebook.models.hf import TransformersVLM
from vlm_notebook.models.llama_step import GraphedLlamaStep, LlamaStep, llama_text_model, qwen2_vl_text_model
from vlm_notebook.options import GenerationOptions
from vlm_notebook.registry import get_model


@pytest.fixture(scope="module")
def int8_smolvlm() -> SmolVLM:
    model = SmolVLM("shapes-smolvlm", int8=True)
    model.load()
    return model


@pytest.fixture(scope="module", params=["float32", "bfloat16"])
def smolvlm_in(request: pytest.FixtureRequest) -> SmolVLM:
    """The shipped SmolVLM in each number format the CPU runtime can pick (whatever this CPU picks)."""
    model = SmolVLM("shapes-smolvlm", dtype=request.param)
    model.load()
    return model


@pytest.fixture(scope="module")
def fp32_smolvlm() -> SmolVLM:
    model = SmolVLM("shapes-smolvlm", dtype="float32")
    model.load()
    return model


def prefilled(model: SmolVLM, ids: torch.Tensor) -> DynamicCache:
    text_model = model.model.model.text_model
    cache = DynamicCache(config=text_model.config)
    text_model(input_ids=ids, cache=cache, use_cache=True)
    return cache


def transformers_step(model: SmolVLM, cache: DynamicCache, token_id: int) -> torch.Tensor:
    output = model.model.model.text_model(input_ids=torch.tensor([[token_id]]), cache=cache, use_cache=True)
    logits: torch.Tensor = model.model.lm_head(output.last_hidden_state[:, -1])
    return logits


@pytest.mark.timeout(120)
@pytest.mark.parametrize("int8", [False, True], ids=["fp32", "int8"])
def test_every_step_gives_the_logits_of_transformers_modules(
    fp32_smolvlm: SmolVLM, int8_smolvlm: SmolVLM, int8: bool
) -> None:
    model = int8_smolvlm if int8 else fp32_smolvlm
    vocabulary = model.model.config.text_config.vocab_size
    ids = torch.randint(0, vocabulary, (1, 40), generator=torch.Generator().manual_seed(1))
    steps = 60
    with torch.inference_mode():
        theirs = prefilled(model, ids)
        ours = LlamaStep(model.model.model.text_model, model.model.lm_head, prefilled(model, ids), 40 + steps)
        token_id = 5
        for _ in range(steps):
            expected, got = transformers_step(model, theirs, token_id), ours(token_id)
            assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5), float((got - expected).abs().max())
            assert int(got.argmax()) == int(expected.argmax())
            token_id = int(expected.argmax())
        with pytest.raises(RuntimeError, match="buffers hold 100 tokens"):
            ours(token_id)


@pytest.mark.timeout(120)
def test_the_fixed_shape_step_for_gpus_gives_the_steps_logits(smolvlm_in: SmolVLM) -> None:
    """GraphedLlamaStep runs operator by operator off CUDA: its numbers are LlamaStep's (fp32 to
    rounding, the same greedy tokens; bf16 within its rounding, each greedy token the step's or as
    likely within that rounding), in the format the CPU runtime picks."""
    text_model, head = smolvlm_in.model.model.text_model, smolvlm_in.model.lm_head
    vocabulary = smolvlm_in.model.config.text_config.vocab_size
    ids = torch.randint(0, vocabulary, (1, 40), generator=torch.Generator().manual_seed(2))
    steps = 30
    with torch.inference_mode():
        plain = LlamaStep(text_model, head, prefilled(smolvlm_in, ids), 40 + steps)
        fixed = GraphedLlamaStep(text_model, head, prefilled(smolvlm_in, ids), 40 + steps)
        token_id = 5
        for _ in range(steps):
            expected, got = plain(token_id).float(), fixed(token_id).float()
            tolerance = 1e-5 if smolvlm_in.dtype == "float32" else 0.02 * float(expected.abs().max())
            assert torch.allclose(got, expected, rtol=1e-5, atol=tolerance), float((got - expected).abs().max())
            if smolvlm_in.dtype == "float32":
                assert int(got.argmax()) == int(expected.argmax())
            else:
                assert float(expected[0, int(got.argmax())]) >= float(expected.max()) - tolerance
            token_id = int(expected.argmax())
        with pytest.raises(RuntimeError, match="buffers hold 70 tokens"):
            fixed(token_id)


@pytest.mark.timeout(60)
def test_a_gpu_that_cannot_capture_the_step_decodes_operator_by_operator(
    fp32_smolvlm: SmolVLM, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Capturing needs CUDA (tests/test_gpu.py); here the capture fails after its warm-up has run."""

    def refused(step: Callable[[], torch.Tensor], position: torch.Tensor) -> None:
        step()
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(graphs, "captured", refused)
    text_model, head = fp32_smolvlm.model.model.text_model, fp32_smolvlm.model.lm_head
    ids = torch.arange(40).view(1, -1)
    with torch.inference_mode():
        plain = LlamaStep(text_model, head, prefilled(fp32_smolvlm, ids), 50)
        fixed = GraphedLlamaStep(text_model, head, prefilled(fp32_smolvlm, ids), 50)
        fixed.replayer.replays = True  # as on CUDA
        for token_id in (5, 7, 9):
            assert torch.allclose(fixed(token_id), plain(token_id), rtol=1e-5, atol=1e-5)
    assert caplog.text.count("CUDA graphs unavailable") == 1


def test_smolvlms_and_qwen2_vls_text_models_decode_here(shapes_smolvlm: SmolVLM, shapes_qwen2vl: Qwen2VL) -> None:
    assert llama_text_model(shapes_smolvlm.model) is shapes_smolvlm.model.model.text_model
    assert qwen2_vl_text_model(shapes_qwen2vl.model) is shapes_qwen2vl.model.model.language_model
    assert llama_text_model(shapes_qwen2vl.model) is None and qwen2_vl_text_model(shapes_smolvlm.model) is None


@pytest.fixture(
    scope="module",
    params=[(name, dtype) for name in ("shapes-smolvlm", "shapes-qwen2vl") for dtype in ("float32", "bfloat16")],
    ids=lambda param: "-".join(param),
)
def own_step_model(request: pytest.FixtureRequest) -> TransformersVLM:
    """Each family that decodes with its own step, in each number format the CPU runtime can pick."""
    name, dtype = request.param
    model = get_model(name, dtype=dtype)
    assert isinstance(model, TransformersVLM)
    model.load()
    return model


@pytest.mark.timeout(300)
def test_answers_are_generates_answers_token_for_token(own_step_model: TransformersVLM) -> None:
    """The own step after the picture's stored work (for Qwen2-VL, with the multimodal rotary
    positions numbered as ``generate`` numbers them), against ``generate`` on the whole prompt."""
    model = own_step_model
    config = model._generation_config(GenerationOptions())
    for scene in shapes.all_scenes()[::6]:
        image = shapes.draw(scene).image
        for prompt in [model.default_prompt, *(question for question, _ in shapes.questions(scene))]:
            ours = model._generate_text(image, model._chat_text(prompt), GenerationOptions(), None)
            inputs = model._inputs(image, prompt)
            model._forget_position_state()  # Qwen2-VL's: generate numbers the whole prompt itself
            with torch.inference_mode():
                output = model.model.generate(**inputs, generation_config=config)
            assert ours == output[0, inputs["input_ids"].shape[1] :].tolist(), (model.name, scene, prompt)


def draws(logits: torch.Tensor, count: int, temperature: float, top_p: float) -> Counter[int]:
    sample = Sampler(GenerationOptions(temperature=temperature, top_p=top_p, seed=0))
    return Counter(sample(logits) for _ in range(count))


def test_top_p_draws_only_from_the_smallest_set_that_reaches_p() -> None:
    logits = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()
    drawn = draws(logits, 4000, 1.0, 0.7)
    assert set(drawn) == {0, 1}
    assert 0.58 < drawn[0] / 4000 < 0.67, "renormalised within the nucleus: 0.5 / 0.8"
    assert set(draws(logits, 200, 1.0, 0.5)) == {0}, "the first token alone reaches 0.5"
    assert set(draws(logits, 4000, 1.0, 1.0)) == {0, 1, 2, 3}


def test_temperature_sharpens_and_flattens() -> None:
    logits = torch.tensor([2.0, 1.0, 0.0])
    cold = draws(logits, 1000, 0.05, 1.0)
    hot = draws(logits, 3000, 100.0, 1.0)
    assert cold == {0: 1000}
    assert all(800 < hot[token] < 1200 for token in range(3)), hot


def test_the_same_seed_draws_the_same_tokens_and_banned_ids_are_never_drawn() -> None:
    logits = torch.zeros(50)
    options = GenerationOptions(temperature=1.0, seed=3)
    first, second = Sampler(options), Sampler(options)
    picks = [first(logits, banned={7}) for _ in range(500)]
    assert picks == [second(logits, banned={7}) for _ in range(500)]
    assert 7 not in picks and len(set(picks)) > 40
    assert Sampler(GenerationOptions())(torch.tensor([9.0, 1.0, 2.0]), banned={0}) == 2, "greedy skips a ban"
