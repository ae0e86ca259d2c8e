"""The generic family: any transformers image-text-to-text checkpoint loads and answers exactly as
transformers' own ``generate`` does, streams, reuses a picture's work, and never runs Hub code.

Each model type is checked on a tiny random-weight checkpoint of its real classes and processor
(``generic_checkpoints``), built offline; the reference is the model card's recipe run directly:
``apply_chat_template(..., tokenize=True)`` on the same one-message chat, then greedy ``generate``.
"""

from __future__ import annotations

import importlib.util
import json
import random
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from generic_checkpoints import build, set_config
from PIL import Image
from transformers import AutoConfig, AutoModelForImageTextToText, DynamicCache
from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

from vlm_notebook import CheckpointError, CheckpointNotAvailableError, UnknownModelError, get_model, registry, shapes
from vlm_notebook.images import load_image
from vlm_notebook.models import Qwen2VL, attention
from vlm_notebook.models.generic import TransformersModel, load_processor
from vlm_notebook.models.hf import TransformersVLM
from vlm_notebook.stream import TextStream

TOKENS = 12
QUESTION = "What colour is the shape?"
FOLLOW_UP = "What shape is it?"
HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None
HAS_TIMM = importlib.util.find_spec("timm") is not None
#: LFM2-VL's image processor exists only for torchvision, FastVLM's vision tower is a timm model: their
#: tests run in the environment that has both (``make test-torchvision``, part of ``make test``).
NEEDS_TORCHVISION = pytest.mark.skipif(not HAS_TORCHVISION, reason="LFM2-VL's image processor needs torchvision")
NEEDS_TIMM = pytest.mark.skipif(not HAS_TIMM, reason="FastVLM's vision tower needs timm")
#: Model types that have a registry name but no named family, two (llava, fast_vlm) with no name at all,
#: and Qwen2.5-VL, which loads as the named Qwen2-VL family (a small specialization of the same class).
MODEL_TYPES = [
    "qwen3_vl", "qwen3_5", "gemma4", "llava", "qwen2_5_vl",
    pytest.param("lfm2_vl", marks=NEEDS_TORCHVISION), pytest.param("fast_vlm", marks=NEEDS_TIMM),
]


RED_CIRCLE = shapes.Scene("circle", "red", "white")
#: 198x90 pictures: larger than the tiny processors' pixel budgets, and LFM2-VL's cut into two tiles.
WIDE = shapes.RandomSettings(aspect=(2.2, 2.2), short_side=(90, 90), formats=("PNG",))


def picture(scene: shapes.Scene = RED_CIRCLE) -> Image.Image:
    return shapes.draw(scene).image


class BuiltOnFirstUse(dict[str, Path]):
    """Tiny checkpoints by model type, each built when a test first asks for it (so the types whose
    tests are skipped here, for want of torchvision or timm, are never built)."""

    def __init__(self, root: Path):
        super().__init__()
        self.root = root

    def __missing__(self, model_type: str) -> Path:
        self[model_type] = build(model_type, self.root / model_type)
        return self[model_type]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return BuiltOnFirstUse(tmp_path_factory.mktemp("generic"))


@pytest.fixture(scope="module", params=MODEL_TYPES)
def loaded(request: pytest.FixtureRequest, checkpoints: dict[str, Path]) -> tuple[TransformersVLM, Path]:
    directory = checkpoints[request.param]
    model = get_model(directory, device="cpu", dtype="float32")
    assert isinstance(model, TransformersModel if request.param != "qwen2_5_vl" else Qwen2VL)
    model.load()
    return model, directory


def reference_answer(directory: Path, image: Image.Image, prompt: str) -> str:
    """transformers alone: the checkpoint's processor and chat template, then greedy ``generate``."""
    processor = load_processor(directory)
    model = AutoModelForImageTextToText.from_pretrained(directory, dtype=torch.float32).eval()
    messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": prompt}]}]
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=TOKENS, do_sample=False)
    new_ids = output[:, inputs["input_ids"].shape[1]:]
    text: str = processor.batch_decode(new_ids, skip_special_tokens=True)[0].lstrip()  # from the first visible one
    assert len(text) >= 3, f"the random model says almost nothing ({text!r}): the comparison would prove nothing"
    return text


def streamed(stream: str | TextStream) -> tuple[str, TextStream]:
    assert isinstance(stream, TextStream)
    chunks = list(stream)
    assert all(chunks), "no chunk is ever empty"
    return "".join(chunks), stream


@pytest.mark.timeout(120)
def test_a_caption_streams_exactly_what_transformers_generate_answers(loaded: tuple[TransformersVLM, Path]) -> None:
    model, directory = loaded
    model.image_cache.clear()
    text, stream = streamed(model.caption(picture(), stream=True, max_new_tokens=TOKENS))
    whole = model.caption(picture(), max_new_tokens=TOKENS)
    assert text == whole == reference_answer(directory, picture(), TransformersModel.default_prompt)
    assert stream.stats.image_tokens and stream.stats.image_tokens > 0
    assert stream.stats.finish_reason in ("stop", "length") and stream.stats.tokens > 0


@pytest.mark.timeout(120)
def test_a_follow_up_reuses_the_picture_and_answers_as_if_asked_cold(loaded: tuple[TransformersVLM, Path]) -> None:
    model, directory = loaded
    model.image_cache.clear()
    first = model.query(picture(), QUESTION, stream=True, max_new_tokens=TOKENS)
    first.wait(60)
    follow_up = model.query(picture(), FOLLOW_UP, stream=True, max_new_tokens=TOKENS)
    reused = follow_up.wait(60)
    assert (first.stats.image_cache, follow_up.stats.image_cache) == ("miss", "hit")
    model.image_cache.clear()
    cold = model.query(picture(), FOLLOW_UP, max_new_tokens=TOKENS)
    assert reused == cold == reference_answer(directory, picture(), FOLLOW_UP)
    assert first.text == reference_answer(directory, picture(), QUESTION)


@pytest.mark.timeout(120)
def test_a_large_wide_picture_answers_as_transformers_generate_does(loaded: tuple[TransformersVLM, Path]) -> None:
    """Each processor's own sizing: resized to its pixel budget, or cut into tiles with a thumbnail (LFM2-VL)."""
    model, directory = loaded
    image = load_image(shapes.random_picture(random.Random(5), RED_CIRCLE, WIDE).data)
    stream = model.query(image, QUESTION, stream=True, max_new_tokens=TOKENS)
    assert stream.wait(60) == reference_answer(directory, image, QUESTION)


@NEEDS_TORCHVISION
@pytest.mark.timeout(120)
def test_lfm2_vl_cuts_a_large_picture_into_tiles_and_adds_a_thumbnail(checkpoints: dict[str, Path]) -> None:
    model = get_model(checkpoints["lfm2_vl"], device="cpu", dtype="float32")
    stream = model.query(load_image(shapes.random_picture(random.Random(5), RED_CIRCLE, WIDE).data), QUESTION,
                         stream=True, max_new_tokens=TOKENS)
    stream.wait(60)
    # two 32 px tiles of 2x2 tokens (patch 8, 2x2 unshuffled), and the whole picture as a 5x2-token thumbnail
    assert stream.stats.image_tokens == 2 * 4 + 5 * 2


@pytest.mark.timeout(120)
def test_prepare_encodes_ahead_so_the_question_hits(loaded: tuple[TransformersVLM, Path]) -> None:
    model, _ = loaded
    model.image_cache.clear()
    other = picture(shapes.Scene("square", "blue", "gray"))
    assert model.prepare(other).result(timeout=60) is None
    stream = model.query(other, QUESTION, stream=True, max_new_tokens=TOKENS)
    stream.wait(60)
    assert stream.stats.image_cache == "hit"


@pytest.mark.timeout(60)
def test_a_cancelled_stream_stops_and_the_model_keeps_answering(loaded: tuple[TransformersVLM, Path]) -> None:
    model, _ = loaded
    expected = model.query(picture(), QUESTION, max_new_tokens=TOKENS)
    with model._generation_lock:  # hold the model so the cancel lands before any work
        stream = model.query(picture(), QUESTION, stream=True, max_new_tokens=TOKENS)
        stream.cancel()
    assert list(stream) == [] and stream.stats.finish_reason == "cancelled"
    assert model.query(picture(), QUESTION, max_new_tokens=TOKENS) == expected


def test_the_model_reports_where_it_runs(loaded: tuple[TransformersVLM, Path]) -> None:
    model, _ = loaded
    assert (model.device, model.dtype) == ("cpu", "float32")
    assert model.caption_options == (("language",) if isinstance(model, Qwen2VL) else ("prompt",))


def test_the_processor_is_the_model_types_own_even_without_torchvision(loaded: tuple[TransformersVLM, Path]) -> None:
    model, directory = loaded
    model_type = json.loads((directory / "config.json").read_text())["model_type"]
    saved = json.loads((directory / "processor_config.json").read_text())["processor_class"]
    own = PROCESSOR_MAPPING_NAMES.get(model_type, saved)  # FastVLM has no mapping: its checkpoint names LLaVA's
    assert any(base.__name__ == own for base in type(model.processor).__mro__)
    assert model.processor.chat_template == (directory / "chat_template.jinja").read_text()


@pytest.mark.timeout(60)
def test_sampling_with_a_seed_is_repeatable_and_streams_the_same(loaded: tuple[TransformersVLM, Path]) -> None:
    model, _ = loaded
    options: dict[str, Any] = {"temperature": 2.0, "top_p": 0.9, "seed": 7, "max_new_tokens": TOKENS}
    first = model.query(picture(), QUESTION, **options)
    assert model.query(picture(), QUESTION, **options) == first
    assert "".join(model.query(picture(), QUESTION, stream=True, **options)) == first


def test_a_checkpoint_of_a_named_family_keeps_its_family(checkpoints: dict[str, Path]) -> None:
    shipped = Path(registry.resolve("shapes-smolvlm").source)
    assert type(get_model(shipped)).__name__ == "SmolVLM"
    assert type(get_model(checkpoints["llava"])).__name__ == "TransformersModel"


@pytest.mark.parametrize("name", ["qwen3.5-0.8b", "qwen3-vl-2b", "gemma-4-e2b", "lfm2.5-vl-450m"])
def test_current_models_have_short_names_in_the_generic_family(name: str) -> None:
    model = get_model(name)
    assert isinstance(model, TransformersModel) and model.entry.family == "transformers"


def test_a_named_hub_checkpoint_not_in_the_cache_says_how_to_fetch_it() -> None:
    model = TransformersModel("qwen3-vl-2b")
    with pytest.raises(CheckpointNotAvailableError, match="hf download Qwen/Qwen3-VL-2B-Instruct"):
        model.load()
    assert not model.loaded


def test_a_checkpoint_that_needs_hub_code_is_refused(tmp_path: Path) -> None:
    config = {"model_type": "my_vlm", "auto_map": {"AutoModelForImageTextToText": "modeling_my_vlm.MyVLM"}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"its own code from the Hub.*never runs"):
        get_model(tmp_path)


def test_a_model_type_transformers_cannot_caption_with_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(CheckpointError, match=r"'bert' model.*AutoModelForImageTextToText"):
        get_model(tmp_path)


@pytest.mark.timeout(60)
def test_an_image_processor_that_needs_torchvision_says_to_install_it(tmp_path: Path) -> None:
    """LFM2-VL's image processor has no PIL version: without torchvision the error says what to install."""
    if HAS_TORCHVISION:
        pytest.skip("this environment has torchvision")
    directory = build("llava", tmp_path / "lfm2")
    set_config(directory, model_type="lfm2_vl")
    (directory / "preprocessor_config.json").write_text(json.dumps({"image_processor_type": "Lfm2VlImageProcessor"}))
    (directory / "processor_config.json").write_text(json.dumps({"processor_class": "Lfm2VlProcessor"}))
    model = get_model(directory)
    with pytest.raises(CheckpointError, match=r"needs torchvision\. To load this checkpoint, install the torchvision"):
        model.load()
    assert not model.loaded


@pytest.mark.timeout(60)
def test_concurrent_questions_are_answered_one_at_a_time(loaded: tuple[TransformersVLM, Path]) -> None:
    model, _ = loaded
    expected = model.query(picture(), QUESTION, max_new_tokens=TOKENS)
    answers: list[str] = []
    threads = [
        threading.Thread(target=lambda: answers.append(model.query(picture(), QUESTION, max_new_tokens=TOKENS)))
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(50)
    assert answers == [expected] * 3


@pytest.mark.timeout(60)
def test_a_vision_tower_that_needs_timm_says_to_install_it(tmp_path: Path) -> None:
    """FastVLM's vision tower is a timm model: without timm the error names the package."""
    if HAS_TIMM:
        pytest.skip("this environment has timm")
    directory = build("llava", tmp_path / "fastvlm")
    config = AutoConfig.for_model("fast_vlm").to_dict()
    (directory / "config.json").write_text(json.dumps(config))
    model = get_model(directory)
    assert isinstance(model, TransformersModel)
    with pytest.raises(CheckpointError, match=r"(?s)weights .* needs a package: .*pip install timm"):
        model.load()
    assert not model.loaded


@pytest.mark.timeout(60)
def test_any_hub_id_loads_through_the_generic_class() -> None:
    """``TransformersModel('org/name')`` takes any Hub id (offline, one not in the cache says how to fetch it)."""
    model = TransformersModel("someone/my-llava")
    assert model.entry.source == "someone/my-llava" and not model.loaded
    with pytest.raises(CheckpointNotAvailableError, match="hf download someone/my-llava"):
        model.load()
    with pytest.raises(UnknownModelError, match=r"TransformersModel\('org/name'\)"):
        get_model("someone/my-llava")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_every_model_type_answers_in_bf16_with_its_linears_packed(
    checkpoints: dict[str, Path], model_type: str
) -> None:
    """bf16 is the CPU default where the CPU has bf16 instructions, and then the linear weights are
    packed for oneDNN: model code that reads a weight (for its dtype) must still run."""
    model = get_model(checkpoints[model_type], device="cpu", dtype="bfloat16")
    text = model.caption(picture(), max_new_tokens=4)
    assert isinstance(text, str) and model.dtype == "bfloat16"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_in_bf16_a_decoded_tokens_attention_is_sdpas(
    checkpoints: dict[str, Path], model_type: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a CPU in bf16 the text decoder attends through vlm_notebook's function: a decoded token's
    attention as three products (faster there), the rest as "sdpa". A decode step's logits are the
    ones "sdpa" gives, to bf16 rounding."""
    model = get_model(checkpoints[model_type], device="cpu", dtype="bfloat16")
    model.load()
    decoder, head = model.model.get_decoder(), model.model.get_output_embeddings()
    assert decoder.config._attn_implementation == attention.TRANSFORMERS_NAME
    calls: list[int] = []

    def counted(*args: Any) -> torch.Tensor:
        calls.append(1)
        return attention.attention_in_three_products(*args)

    monkeypatch.setattr(attention, "attend_one_query", counted)
    vocabulary = model.model.config.get_text_config().vocab_size
    prompt = torch.randint(0, vocabulary, (1, 30), generator=torch.Generator().manual_seed(4))

    def next_logits() -> torch.Tensor:
        cache = DynamicCache(config=decoder.config)
        with torch.inference_mode():
            decoder(input_ids=prompt, cache=cache, use_cache=True)
            step = decoder(input_ids=torch.tensor([[7]]), cache=cache, use_cache=True)
            return head(step.last_hidden_state[:, -1]).float()

    ours = next_logits()
    assert calls, "the decoded token attended through three products"
    decoder.set_attn_implementation("sdpa")
    theirs = next_logits()
    tolerance = 0.02 * float(theirs.abs().max())
    assert torch.allclose(ours, theirs, atol=tolerance, rtol=0), float((ours - theirs).abs().max())
