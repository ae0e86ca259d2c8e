"""Reusing an image's work for follow-up questions, encoding ahead, CPU defaults, speed figures.

Exactness is checked on the shipped checkpoints against the model-card path (the processor on
the whole prompt, then ``generate`` with the pixels), which never touches the image store.
"""

from __future__ import annotations

import io
import json
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import ipywidgets as widgets
import pytest
import torch
from holds import hook
from PIL import Image

from vlm_notebook import ImageError, RequestError, cpu, shapes
from vlm_notebook.cache import PrefixCache, PrefixEntry, cache_bytes, image_digest
from vlm_notebook.models import Qwen2VL, SmolVLM, attention
from vlm_notebook.models._prefix import encode_prefix, split_prompt
from vlm_notebook.models.hf import TransformersVLM
from vlm_notebook.models.smolvlm import cpu_longest_edge
from vlm_notebook.options import GenerationOptions
from vlm_notebook.stream import TextStream
from vlm_notebook.widgets import SmolVLMWidget

SCENES = shapes.all_scenes()
RED_CIRCLE = shapes.Scene("circle", "red", "white")
BLUE_SQUARE = shapes.Scene("square", "blue", "gray")
SHIPPED_SMOLVLM = Path(__file__).resolve().parents[1] / "vlm_notebook" / "checkpoints" / "shapes-smolvlm"


def picture(scene: shapes.Scene = RED_CIRCLE) -> Image.Image:
    return shapes.draw(scene).image


def model_card_answer(model: TransformersVLM, image: Image.Image, prompt: str) -> str:
    """Greedy answer by the model card's path: whole prompt with pixels, no stored work."""
    inputs = model._inputs(image, prompt)
    config = model._generation_config(GenerationOptions())
    with torch.inference_mode():
        output = model.model.generate(**inputs, generation_config=config)
    new_ids = output[:, inputs["input_ids"].shape[1]:]
    text: str = model.processor.batch_decode(new_ids, skip_special_tokens=True)[0]
    return text.lstrip()  # answers start at their first visible character


def caption_prompt(model: TransformersVLM) -> str:
    return SmolVLM.default_prompt if isinstance(model, SmolVLM) else "Describe this image."


@pytest.mark.timeout(300)
def test_follow_up_questions_give_exactly_the_cold_answers(model: TransformersVLM) -> None:
    wrong = {}
    for scene in SCENES[::4]:
        image = picture(scene)
        asks = [(caption_prompt(model), shapes.caption(scene)), *shapes.questions(scene)]
        for number, (prompt, expected) in enumerate(asks):
            stream = model.caption_with(image, stream=True) if number == 0 else model.query(image, prompt, stream=True)
            assert isinstance(stream, TextStream)
            text = stream.wait(60)
            assert stream.stats.image_cache == ("miss" if number == 0 else "hit")
            cold = model_card_answer(model, image, prompt)
            if not text == cold == expected:
                wrong[(scene, prompt)] = (text, cold, expected)
    assert not wrong, wrong


def test_the_reused_prompt_has_the_model_card_ids(model: TransformersVLM) -> None:
    """The prefix from the store plus the question tokenized alone equal the processor's ids."""
    image = picture(BLUE_SQUARE)
    for question in ["What colour is the shape?", "Is it round?  Answer: yes or no.", "この図形は何色ですか？"]:
        whole = model._inputs(image, question)
        parts = split_prompt(model._chat_text(question), model.image_token)
        assert parts is not None
        with torch.inference_mode():
            inputs, _, _ = model._continuation(image, parts, None)
        assert set(inputs) == set(whole) - {key for key in whole if key.startswith("pixel_")}
        for key, value in inputs.items():
            assert torch.equal(value, whole[key]), key


def assert_one_pass_gives_the_numbers_of_two(model: TransformersVLM, photo: Image.Image) -> int:
    """On a miss the prefix and the question's words go through in one pass; its next-token logits
    and the prefix's stored KV cache are those of the two passes of a hit. Returns the prompt's length."""
    assert attention.attends_through_it(model.model)
    parts = split_prompt(model._chat_text("What colour is the shape?"), model.image_token)
    assert parts is not None
    with torch.inference_mode(), model.runtime.phases(model.model):
        _, _, in_one_pass = model._continuation(photo, parts, None, in_one_pass=True)
        inputs, cache, reused = model._continuation(photo, parts, None, in_one_pass=True)
        assert in_one_pass is not None and reused is None, "a miss in one pass, then a hit"
        cached = cache.get_seq_length()
        positions, _ = model._prompt_positions(inputs)
        placed = {} if positions is None else {"position_ids": positions[..., cached:]}
        words = model.model(input_ids=inputs["input_ids"][:, cached:], cache=cache, logits_to_keep=1, **placed)
        model._forget_position_state()
        alone, _ = encode_prefix(model.model, model.processor, photo, parts.before + model.image_token,
                                 model._processor_kwargs(), model.runtime)
        model._forget_position_state()
        stored, hit, _ = model._image_work(photo, parts.before)
    assert torch.equal(in_one_pass, words.logits[:, -1])
    assert hit and all(torch.equal(kept.keys, own.keys) and torch.equal(kept.values, own.values)
                       for kept, own in zip(stored.kv_cache.layers, alone.kv_cache.layers, strict=True))
    return int(inputs["input_ids"].shape[1])


@pytest.mark.parametrize("family", [SmolVLM, Qwen2VL], ids=["smolvlm", "qwen2vl"])
def test_a_new_pictures_prompt_in_one_pass_gives_the_numbers_of_two(family: type[TransformersVLM]) -> None:
    model = family(f"shapes-{family.family}", dtype="bfloat16")
    model.load()
    assert_one_pass_gives_the_numbers_of_two(model, picture())


def test_a_long_prompt_in_one_pass_gives_the_numbers_of_two_with_bf16_scores(
    tiled_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(attention, "has_fast_bf16", lambda: True)
    monkeypatch.setattr(attention, "MANY_QUERIES", 64)  # the 13 tiles' prompt is shorter than the real bound
    card = SmolVLM(str(tiled_checkpoint), defaults="card", dtype="bfloat16")
    card.load()
    length = assert_one_pass_gives_the_numbers_of_two(card, picture().resize((640, 480)))
    assert length > attention._GROUPED_CAUSAL_BLOCK, "bf16 scores, in two causal blocks"


@pytest.mark.timeout(120)
def test_stats_tell_a_miss_from_a_hit_and_time_the_parts(model: TransformersVLM) -> None:
    first = model.query(picture(), "What colour is the shape?", stream=True)
    first.wait(60)
    second = model.query(picture(), "What shape is it?", stream=True)
    second.wait(60)
    other = model.query(picture(BLUE_SQUARE), "What shape is it?", stream=True)
    other.wait(60)
    miss, hit = first.stats, second.stats
    assert (miss.image_cache, hit.image_cache, other.stats.image_cache) == ("miss", "hit", "miss")
    assert miss.vision_seconds is not None and miss.vision_seconds > 0
    assert hit.vision_seconds == 0.0
    assert miss.prefill_seconds is not None and hit.prefill_seconds is not None and hit.prefill_seconds > 0
    assert miss.image_tokens == hit.image_tokens == (5 * 16 if isinstance(model, SmolVLM) else 64)
    assert miss.tiles == (5 if isinstance(model, SmolVLM) else None)
    ttft = hit.time_to_first_token
    assert ttft is not None and miss.decode_seconds is not None
    assert hit.prefill_seconds <= ttft
    record = hit.as_dict()
    assert record["image_cache"] == "hit" and "decode_seconds" in record
    json.dumps(record)


@pytest.mark.timeout(120)
def test_prepare_encodes_ahead_so_the_question_hits(model: TransformersVLM) -> None:
    future = model.prepare(picture(BLUE_SQUARE))
    assert future.result(timeout=60) is None
    assert len(model.image_cache) == 1
    stream = model.query(picture(BLUE_SQUARE), "What colour is the shape?", stream=True)
    assert stream.wait(60) == model_card_answer(model, picture(BLUE_SQUARE), "What colour is the shape?")
    assert stream.stats.image_cache == "hit" and stream.stats.vision_seconds == 0.0


@pytest.mark.timeout(120)
def test_prepare_refuses_a_bad_image_at_once_and_the_model_keeps_working(shapes_smolvlm: SmolVLM) -> None:
    with pytest.raises(ImageError):
        shapes_smolvlm.prepare(b"not an image")
    assert shapes_smolvlm.caption(picture()) == "A red circle on a white background."


@pytest.mark.timeout(120)
def test_prepare_of_a_picture_the_family_cannot_take_fails_its_future_clearly(shapes_qwen2vl: Qwen2VL) -> None:
    thin = Image.new("RGB", (10000, 10), "white")
    with pytest.raises(ImageError, match="crop it, or pad it"):
        shapes_qwen2vl.prepare(thin).result(timeout=60)
    assert shapes_qwen2vl.caption(picture()) == "A red circle on a white background."


@pytest.mark.timeout(120)
def test_a_prepare_and_questions_from_threads_take_turns(shapes_smolvlm: SmolVLM) -> None:
    shapes_smolvlm.image_cache.clear()
    answers: list[str] = []
    future = shapes_smolvlm.prepare(picture(BLUE_SQUARE))
    threads = [
        threading.Thread(target=lambda: answers.append(shapes_smolvlm.query(picture(BLUE_SQUARE), "What shape is it?")))
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    future.result(timeout=60)
    assert answers == [model_card_answer(shapes_smolvlm, picture(BLUE_SQUARE), "What shape is it?")] * 3


@pytest.mark.timeout(180)
def test_the_store_keeps_at_most_its_bound_of_pictures(shapes_smolvlm: SmolVLM) -> None:
    saved = shapes_smolvlm.image_cache
    shapes_smolvlm.image_cache = PrefixCache(max_entries=2)
    try:
        for scene in SCENES[:3]:
            shapes_smolvlm.caption(picture(scene))
        assert len(shapes_smolvlm.image_cache) == 2
        oldest = shapes_smolvlm.caption(picture(SCENES[0]), stream=True)
        assert oldest.wait(60) == shapes.caption(SCENES[0])
        assert oldest.stats.image_cache == "miss", "the least recently used picture was evicted"
        newest = shapes_smolvlm.caption(picture(SCENES[2]), stream=True)
        newest.wait(60)
        assert newest.stats.image_cache == "hit"
    finally:
        shapes_smolvlm.image_cache = saved


def test_the_store_is_bounded_in_bytes() -> None:
    def entry(tokens: int) -> PrefixEntry:
        cache = [(torch.zeros(1, 2, tokens, 8), torch.zeros(1, 2, tokens, 8))]
        return PrefixEntry(input_ids=torch.zeros(1, tokens, dtype=torch.long), kv_cache=cache)

    size = entry(100).nbytes
    assert size == cache_bytes(entry(100).kv_cache) + 100 * 8
    store = PrefixCache(max_entries=10, max_bytes=int(size * 2.5))
    for key in range(4):
        store.put(key, entry(100))
    assert len(store) == 2 and 2 in store and 3 in store and store.nbytes <= store.max_bytes
    store.put("huge", entry(1000))
    assert "huge" not in store and len(store) == 2, "an entry above the bound alone is not kept"
    with pytest.raises(ValueError):
        PrefixCache(max_entries=-1)


def test_the_key_is_the_pictures_content_not_the_object() -> None:
    same = picture(RED_CIRCLE)
    assert image_digest(same) == image_digest(picture(RED_CIRCLE))
    assert image_digest(same) != image_digest(picture(BLUE_SQUARE))
    assert image_digest(same) != image_digest(same.resize((same.width + 1, same.height)))


@pytest.mark.timeout(120)
def test_a_stored_cache_is_never_changed_by_a_generation(shapes_smolvlm: SmolVLM) -> None:
    shapes_smolvlm.image_cache.clear()
    shapes_smolvlm.caption(picture())
    (entry,) = [shapes_smolvlm.image_cache.get(key) for key in list(shapes_smolvlm.image_cache._entries)]
    assert entry is not None
    length = entry.kv_cache.get_seq_length()
    shapes_smolvlm.query(picture(), "What colour is the background?")
    assert entry.kv_cache.get_seq_length() == length == entry.input_ids.shape[1]


@pytest.fixture(scope="module")
def tiled_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped SmolVLM with the model card's kind of image settings: a long edge of 4 tiles."""
    directory = tmp_path_factory.mktemp("tiled") / "shapes-smolvlm"
    shutil.copytree(SHIPPED_SMOLVLM, directory)
    config_path = directory / "processor_config.json"
    config = json.loads(config_path.read_text())
    tile = config["image_processor"]["max_image_size"]["longest_edge"]
    config["image_processor"].update(do_image_splitting=True, size={"longest_edge": 4 * tile})
    config_path.write_text(json.dumps(config))
    return directory


@pytest.mark.timeout(120)
def test_cpu_defaults_show_smolvlm_one_512px_tiles_pixels_and_card_defaults_restore_tiling(
    tiled_checkpoint: Path,
) -> None:
    photo = picture().resize((640, 480))
    cpu, card = SmolVLM(str(tiled_checkpoint)), SmolVLM(str(tiled_checkpoint), defaults="card")
    cpu_stream, card_stream = cpu.caption(photo, stream=True), card.caption(photo, stream=True)
    cpu_stream.wait(60), card_stream.wait(60)
    assert cpu_stream.stats.tiles == 3 * 3 + 1, "a longest edge of 3 tiles: 10 tiles of 128 px fit in 512 x 512"
    assert cpu_stream.stats.image_tokens == 10 * 16
    assert card_stream.stats.tiles == 4 * 3 + 1 and card_stream.stats.image_tokens == 13 * 16


def test_on_a_cpu_smolvlms_own_checkpoints_see_one_tile_and_small_tiles_keep_their_splitting() -> None:
    assert cpu_longest_edge(512, 2048) == 512, "SmolVLM-256M and -500M"
    assert cpu_longest_edge(384, 1536) == 384, "SmolVLM-Instruct (2.2B)"
    assert cpu_longest_edge(364, 4 * 364) == 364, "Idefics3-8B"
    assert cpu_longest_edge(128, 256) == 256, "shapes-smolvlm: its own sizes"
    assert cpu_longest_edge(128, 128) == 128
    assert cpu_longest_edge(128, 1024) == 384


def test_cpu_defaults_keep_the_shipped_checkpoints_exact(shapes_smolvlm: SmolVLM, shapes_qwen2vl: Qwen2VL) -> None:
    card_smol, card_qwen = SmolVLM("shapes-smolvlm", defaults="card"), Qwen2VL("shapes-qwen2vl", defaults="card")
    for scene in SCENES[::9]:
        assert card_smol.caption(picture(scene)) == shapes_smolvlm.caption(picture(scene)) == shapes.caption(scene)
        assert card_qwen.caption(picture(scene)) == shapes_qwen2vl.caption(picture(scene))


def test_qwen2vl_card_defaults_lift_the_pixel_cap(shapes_qwen2vl: Qwen2VL) -> None:
    card = Qwen2VL("shapes-qwen2vl", defaults="card")
    card.load()
    cap = int(card.processor.image_processor.size["longest_edge"])
    assert card.pixel_range[1] == cap
    assert shapes_qwen2vl.pixel_range[1] == min(256 * 28 * 28, cap)
    assert Qwen2VL("shapes-qwen2vl", defaults="card", max_pixels=28 * 28 * 4).pixel_range[1] == 28 * 28 * 4


def test_an_unknown_defaults_value_is_refused_with_the_choices() -> None:
    with pytest.raises(RequestError, match="'cpu', 'card'"):
        SmolVLM("shapes-smolvlm", defaults="gpu")
    with pytest.raises(RequestError, match="'cpu', 'card'"):
        Qwen2VL("shapes-qwen2vl", defaults="fast")


@pytest.mark.timeout(120)
def test_the_widget_encodes_an_upload_ahead_so_run_reuses_it(shapes_smolvlm: SmolVLM) -> None:
    shapes_smolvlm.image_cache.clear()
    widget = SmolVLMWidget(shapes_smolvlm)
    buffer = io.BytesIO()
    picture(BLUE_SQUARE).save(buffer, format="PNG")
    content = buffer.getvalue()
    widget.upload.set_state({"value": [{"name": "b.png", "type": "image/png", "size": len(content),
                                        "last_modified": 1_700_000_000_000, "content": memoryview(content)}]})
    assert widget.preparing is not None
    widget.preparing.result(timeout=60)
    widget.question.value = "What colour is the shape?"
    widget.mode.value = "question"
    assert widget.run()
    assert widget.wait(60) == "Blue."
    stats = widget.stats
    assert stats is not None and stats.image_cache == "hit"
    assert "(reused)" in widget.figures.value
    assert isinstance(widget.figures, widgets.Widget)


@pytest.mark.timeout(120)
@pytest.mark.usefixtures("two_prefill_threads_one_decode")
def test_prefill_uses_the_prefill_threads_and_decoding_the_decode_threads(shapes_smolvlm: SmolVLM) -> None:
    shapes_smolvlm.image_cache.clear()
    prompt: list[int] = []  # torch's threads at each pass of transformers' text model: the prompt's
    output: list[int] = []  # and at each use of the output layer: the question's words', then tokens'

    def recorder(threads: list[int]) -> Callable[[torch.nn.Module, object], None]:
        return lambda module, args: threads.append(torch.get_num_threads())

    before = torch.get_num_threads()
    with hook(shapes_smolvlm.model.model.text_model, recorder(prompt)), \
            hook(shapes_smolvlm.model.lm_head, recorder(output)):
        assert shapes_smolvlm.caption(picture()) == "A red circle on a white background."
    passes = 1 if attention.attends_through_it(shapes_smolvlm.model) else 2  # whole prompt, or prefix then words
    assert prompt == [2] * passes
    assert output[0] == 2 and output[1:] and set(output[1:]) == {1}
    assert torch.get_num_threads() == before, "torch's thread count is put back"


def test_a_bad_thread_count_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        cpu.set_thread_policy(decode=0)
    assert cpu.physical_cores() >= 1


@pytest.mark.timeout(240)
def test_int8_is_opt_in_and_keeps_the_shipped_answers(shapes_smolvlm: SmolVLM) -> None:
    quantized = SmolVLM("shapes-smolvlm", int8=True)
    quantized.load()
    int8_linear = torch.ao.nn.quantized.dynamic.Linear
    assert not any(isinstance(module, torch.nn.Linear) for module in quantized.model.modules())
    assert any(isinstance(module, int8_linear) for module in quantized.model.modules())
    assert not any(isinstance(module, int8_linear) for module in shapes_smolvlm.model.modules())
    for scene in SCENES[::6]:
        assert quantized.caption(picture(scene)) == shapes.caption(scene)
        for question, answer in shapes.questions(scene):
            assert quantized.query(picture(scene), question) == answer
    with pytest.raises(RequestError, match="int8"):
        SmolVLM("shapes-smolvlm", int8="yes")  # type: ignore[arg-type]


def test_the_reused_prompt_has_the_model_card_ids_with_many_tiles(tiled_checkpoint: Path) -> None:
    card = SmolVLM(str(tiled_checkpoint), defaults="card")
    card.load()
    photo = picture().resize((640, 480))
    question = "What colour is the shape?"
    parts = split_prompt(card._chat_text(question), card.image_token)
    assert parts is not None
    with torch.inference_mode():
        inputs, _, _ = card._continuation(photo, parts, None)
    whole = card._inputs(photo, question)
    assert torch.equal(inputs["input_ids"], whole["input_ids"]) and whole["pixel_values"].shape[1] == 13


def test_the_default_threads_are_the_physical_cores_unless_omp_num_threads_caps_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cores = cpu.physical_cores()
    assert cpu.default_thread_policy() == cpu.ThreadPolicy(prefill=cores, decode=cores, measure_decode=cores > 1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert cpu.default_thread_policy() == cpu.ThreadPolicy(prefill=1, decode=1)


@pytest.mark.timeout(120)
def test_a_cancel_during_the_image_work_stores_nothing_and_the_model_keeps_working(shapes_smolvlm: SmolVLM) -> None:
    shapes_smolvlm.image_cache.clear()
    streams: list[TextStream] = []
    entered = threading.Event()

    def cancel_inside_the_vision_encoder(module: torch.nn.Module, args: object) -> None:
        entered.set()
        streams[0].cancel()

    vision = shapes_smolvlm.model.model.vision_model
    handle = vision.register_forward_pre_hook(cancel_inside_the_vision_encoder)
    lock = shapes_smolvlm._generation_lock
    try:
        with lock:  # hold the model so the stream is in the list before its work starts
            streams.append(shapes_smolvlm.caption(picture(), stream=True))
        streams[0].wait(60)
    finally:
        handle.remove()
    assert entered.is_set() and streams[0].stats.finish_reason == "cancelled" and streams[0].stats.tokens == 0
    assert len(shapes_smolvlm.image_cache) == 0
    again = shapes_smolvlm.caption(picture(), stream=True)
    assert again.wait(60) == "A red circle on a white background." and again.stats.image_cache == "miss"
