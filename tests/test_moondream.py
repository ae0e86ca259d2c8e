"""Moondream 2, native: the full-size module tree against the published checkpoint's manifest,
and every user-facing behaviour on the shipped tiny ``shapes-moondream``."""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from holds import hook
from PIL import Image

from vlm_notebook import registry, shapes
from vlm_notebook.errors import CheckpointError, CheckpointNotAvailableError, RequestError
from vlm_notebook.images import load_image
from vlm_notebook.models import Moondream, attention, graphs
from vlm_notebook.models.moondream import EncodedImage, MoondreamConfig, crops
from vlm_notebook.models.moondream.inference import (
    GraphedStep,
    _prefill,
    _step,
    encoded_crops,
    generate_text,
    image_embeddings,
)
from vlm_notebook.models.moondream.network import build_on_meta
from vlm_notebook.models.moondream.prompts import caption_prompt, locate_prompt, query_prompt
from vlm_notebook.models.moondream.text import prefix_causal_mask
from vlm_notebook.models.moondream.vision import patchify
from vlm_notebook.options import GenerationOptions
from vlm_notebook.training.moondream import (
    PictureClassifier,
    Recipe,
    ShapesObjective,
    TinySizes,
    build_config,
    build_network,
    build_tiny_tokenizer,
    iou,
    load_init,
    make_batch_maker,
    make_example,
    save,
    tokens_over_middle,
    train_model,
)
from vlm_notebook.training.pictures import Mix, PictureSource
from vlm_notebook.training.vision import scene_labels

MANIFEST = Path(__file__).parent / "data" / "moondream2-2025-06-21.tsv"
RED_CIRCLE = shapes.Scene("circle", "red", "white")


def _manifest() -> dict[str, tuple[int, ...]]:
    rows = [line.split("\t") for line in MANIFEST.read_text().splitlines() if not line.startswith("#")]
    return {name: tuple(int(n) for n in shape.split("x")) for name, shape in rows}


def test_full_size_module_tree_has_exactly_the_published_tensor_names_and_shapes() -> None:
    published = _manifest()
    built = {name: tuple(t.shape) for name, t in build_on_meta(MoondreamConfig()).state_dict().items()}
    assert sorted(set(published) - set(built)) == [], "tensors of the checkpoint the model would not load"
    assert sorted(set(built) - set(published)) == [], "tensors the model has that the checkpoint does not"
    wrong = {name: (built[name], shape) for name, shape in published.items() if built[name] != shape}
    assert wrong == {}, "tensors whose shape differs from the published one"
    assert sum(torch.Size(s).numel() for s in published.values()) == 1_927_237_104


def test_full_size_defaults_are_the_published_release() -> None:
    config = MoondreamConfig()
    assert config.prefix_len == 730  # BOS + 27 x 27 image tokens, attended both ways
    assert config.text.rotary_dim == 32
    assert config.tokenizer.template("query") == ([1, 15381, 2], [3])
    model = Moondream()
    assert (model.entry.source, model.revision) == ("vikhyatk/moondream2", "2025-06-21")
    assert Moondream(revision="main").revision == "main"


@pytest.fixture(scope="module")
def model() -> Moondream:
    loaded = Moondream("shapes-moondream")
    loaded.load()
    return loaded


@pytest.fixture(scope="module")
def red_circle(model: Moondream) -> EncodedImage:
    return model.encode_image(shapes.draw(RED_CIRCLE).image)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("scene", shapes.all_scenes(), ids=str)
def test_captions_are_exact_at_every_length(model: Moondream, scene: shapes.Scene) -> None:
    encoded = model.encode_image(shapes.draw(scene).image)
    for length in shapes.CAPTION_LENGTHS:
        assert model.caption(encoded, length=length) == shapes.caption_of_length(scene, length)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("scene", shapes.all_scenes(), ids=str)
def test_answers_are_exact(model: Moondream, scene: shapes.Scene) -> None:
    encoded = model.encode_image(shapes.draw(scene).image)
    for question, answer in shapes.questions(scene):
        assert model.query(encoded, question) == answer


@pytest.mark.timeout(120)
@pytest.mark.parametrize("seed", range(8))
def test_detect_finds_the_drawn_shape_and_point_falls_inside_it(model: Moondream, seed: int) -> None:
    import random

    rng = random.Random(seed)
    scene = rng.choice(shapes.all_scenes())
    drawing = shapes.draw(scene, 64, rng)  # random position and size
    boxes = model.detect(drawing.image, scene.shape)
    assert len(boxes) == 1
    box = boxes[0]
    assert iou((box["x_min"], box["y_min"], box["x_max"], box["y_max"]), drawing.box) >= 0.5
    points = model.point(drawing.image, scene.shape)
    assert len(points) == 1
    x0, y0, x1, y1 = drawing.box
    assert x0 <= points[0]["x"] <= x1 and y0 <= points[0]["y"] <= y1


@pytest.mark.timeout(60)
@pytest.mark.parametrize("request_kind", ["caption long", "japanese answer"])
def test_streamed_text_equals_the_whole_answer(model: Moondream, red_circle: EncodedImage, request_kind: str) -> None:
    picture = shapes.draw(RED_CIRCLE).image
    if request_kind == "caption long":
        whole = model.caption(picture, length="long")
        stream = model.caption(picture, length="long", stream=True)
    else:
        question = "What colour is the shape? Answer in Japanese."
        whole = model.query(red_circle, question)
        stream = model.query(red_circle, question, stream=True)
    chunks = list(stream)
    assert "".join(chunks) == whole and all(chunks)
    assert stream.stats.finish_reason == "stop"
    assert stream.stats.image_tokens == 256 and stream.stats.time_to_first_token is not None


@pytest.fixture
def vision_calls(model: Moondream) -> Iterator[list[int]]:
    calls: list[int] = []
    model.image_cache.clear()
    handle = model.network.vision.proj_mlp.register_forward_hook(lambda *args: calls.append(1))  # once a picture
    yield calls
    handle.remove()


@pytest.mark.timeout(60)
def test_questions_on_an_encoded_image_do_not_run_the_vision_encoder_again(
    model: Moondream, vision_calls: list[int]
) -> None:
    encoded = model.encode_image(shapes.draw(RED_CIRCLE).image)
    assert len(vision_calls) == 1
    assert model.query(encoded, "What shape is it?") == "A circle."
    assert model.query(encoded, "What colour is the background?") == "White."
    assert "".join(model.caption(encoded, length="short", stream=True)) == "A red circle."
    assert model.point(encoded, "circle")
    assert len(vision_calls) == 1, "the encoded image was encoded again"
    again = model.query(shapes.draw(RED_CIRCLE).image, "What shape is it?", stream=True)
    assert again.wait(30) == "A circle." and again.stats.image_cache == "hit"
    assert len(vision_calls) == 1, "the same picture, passed again, was encoded again"


@pytest.mark.timeout(60)
def test_prepare_encodes_ahead_and_a_new_picture_is_encoded_once(model: Moondream, vision_calls: list[int]) -> None:
    new, ahead = (shapes.draw(RED_CIRCLE, rng=random.Random(seed)).image for seed in (101, 102))
    first = model.query(new, "What colour is the shape?", stream=True)
    assert first.wait(30) == "Red." and first.stats.image_cache == "miss"
    model.prepare(ahead).result(timeout=30)
    assert len(vision_calls) == 2
    follow_up = model.query(ahead, "What colour is the shape?", stream=True)
    assert follow_up.wait(30) == "Red." and follow_up.stats.image_cache == "hit"
    assert follow_up.stats.vision_seconds == 0.0 and len(vision_calls) == 2


@pytest.mark.timeout(60)
def test_cached_generation_matches_one_full_forward_pass() -> None:
    """The KV-cache path (image prefill, then prompt) gives the same next-token logits as running
    BOS, image and prompt at once with the prefix mask (the way the model was trained). In fp32:
    in bf16 (the default on CPUs with bf16 instructions) the two orders of work round differently."""
    model = Moondream("shapes-moondream", dtype="float32").load()
    assert isinstance(model, Moondream)
    net, picture = model.network, shapes.draw(RED_CIRCLE).image
    prompt = model._query_ids("What shape is it?")
    with torch.inference_mode():
        image, _ = image_embeddings(net, picture)
        bos = net.text.embed(torch.tensor([net.config.tokenizer.bos_id]))
        x = torch.cat([bos, image, net.text.embed(torch.tensor(prompt))])[None]
        full = net.text.logits(net.text(x, 0, mask=prefix_causal_mask(x.shape[1], net.config.prefix_len)))[0, -1]
        _, hidden = _prefill(net, model.encode_image(picture), torch.tensor([prompt]), 1, None)
        cached = net.text.logits(hidden)[0, -1]
    torch.testing.assert_close(cached, full, rtol=1e-4, atol=1e-4)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_fixed_shape_step_for_gpus_gives_the_plain_steps_logits(dtype: str) -> None:
    """GraphedStep runs operator by operator off CUDA (tests/test_gpu.py replays it there): its
    logits are the plain step's (fp32 to rounding, the same greedy tokens; bf16 within its
    rounding), until the cache is full, which it refuses."""
    model = Moondream("shapes-moondream", dtype=dtype).load()
    assert isinstance(model, Moondream)
    net = model.network
    encoded = model.encode_image(shapes.draw(RED_CIRCLE).image)
    prompt = torch.tensor([model._query_ids("What shape is it?")])
    with torch.inference_mode():
        plain_cache, hidden = _prefill(net, encoded, prompt, 12, None)
        fixed_cache, _ = _prefill(net, encoded, prompt, 12, None)
        fixed = GraphedStep(net, fixed_cache)
        token = int(net.text.logits(hidden).argmax())
        for _ in range(12):
            expected = net.text.logits(_step(net, plain_cache, net.text.embed(torch.tensor([[token]])))).float()
            got = fixed(token).float()
            tolerance = 1e-5 if dtype == "float32" else 0.02 * float(expected.abs().max())
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=tolerance)
            if dtype == "float32":
                assert int(got.argmax()) == int(expected.argmax())
            token = int(expected.argmax())
        assert fixed_cache.length == plain_cache.length == fixed_cache.capacity
        torch.testing.assert_close(fixed_cache.keys[-1].float(), plain_cache.keys[-1].float(), rtol=0, atol=tolerance)
        with pytest.raises(ValueError, match=r"holds \d+ positions; all are used"):
            fixed(token)


@pytest.mark.timeout(60)
def test_a_gpu_that_cannot_capture_moondreams_step_decodes_operator_by_operator(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Capturing needs CUDA (tests/test_gpu.py); here the capture fails after its warm-up has run,
    and the step goes on from the position it had, with the plain step's numbers."""

    def refused(step: Callable[[], torch.Tensor], position: torch.Tensor) -> None:
        step()
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(graphs, "captured", refused)
    model = Moondream("shapes-moondream", dtype="float32").load()
    assert isinstance(model, Moondream)
    net, encoded = model.network, model.encode_image(shapes.draw(RED_CIRCLE).image)
    prompt = torch.tensor([model._query_ids("What colour is the shape?")])
    with torch.inference_mode():
        plain_cache, _ = _prefill(net, encoded, prompt, 5, None)
        fixed_cache, _ = _prefill(net, encoded, prompt, 5, None)
        fixed = GraphedStep(net, fixed_cache)
        fixed.replayer.replays = True  # as on CUDA
        for token in (5, 7, 9):
            expected = net.text.logits(_step(net, plain_cache, net.text.embed(torch.tensor([[token]]))))
            torch.testing.assert_close(fixed(token), expected, rtol=1e-5, atol=1e-5)
    assert caplog.text.count("CUDA graphs unavailable") == 1


def test_caption_length_is_an_option_front_ends_can_pass(model: Moondream) -> None:
    picture = shapes.draw(RED_CIRCLE).image
    assert Moondream.caption_options == ("length",)
    assert model.caption_with(picture, options={"length": "short"}) == "A red circle."
    with pytest.raises(RequestError, match="no caption option prompt"):
        model.caption_with(picture, options={"prompt": "Describe"})


def test_registry_knows_the_family() -> None:
    assert isinstance(registry.get_model("shapes-moondream"), Moondream)
    assert registry.resolve("moondream2").source == "vikhyatk/moondream2"
    assert registry.resolve("vikhyatk/moondream2").family == "moondream"


def test_bad_requests_get_clear_errors_and_the_model_keeps_working(
    model: Moondream, red_circle: EncodedImage
) -> None:
    with pytest.raises(RequestError, match="short, normal, long"):
        model.caption(red_circle, length="medium")
    with pytest.raises(RequestError, match="Name the object"):
        model.detect(red_circle, "  ")
    with pytest.raises(RequestError, match="max_objects"):
        model.point(red_circle, "circle", max_objects=0)
    with pytest.raises(RequestError, match="empty"):
        model.query(red_circle, "")
    assert model.caption(red_circle, length="short") == "A red circle."


def test_weights_that_do_not_fit_the_config_are_refused(model: Moondream, tmp_path: Path) -> None:
    source, target = Path(model.entry.source), tmp_path / "changed"
    shutil.copytree(source, target)
    config = json.loads((target / "config.json").read_text())
    config["config"]["text"]["n_layers"] = 2
    (target / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="do not fit"):
        Moondream(str(target)).load()


def test_an_encoded_image_from_a_model_of_another_shape_is_refused(
    model: Moondream, red_circle: EncodedImage, tmp_path: Path
) -> None:
    sizes = TinySizes(text_layers=1)
    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(0)
    save(tokenizer, build_network(build_config(tokenizer, sizes), sizes), tmp_path / "other")
    other = Moondream(str(tmp_path / "other"))
    with pytest.raises(RequestError, match="different model"):
        other.query(red_circle, "What shape is it?")
    assert model.query(red_circle, "What shape is it?") == "A circle."


def test_text_that_spells_a_special_token_is_refused(model: Moondream, red_circle: EncodedImage) -> None:
    with pytest.raises(RequestError, match="reserves"):
        model.query(red_circle, "What shape is it?<|endoftext|>")
    with pytest.raises(RequestError, match="reserves"):
        model.detect(red_circle, "<|coord|>")


def test_hub_checkpoint_not_in_the_cache_gives_an_error_naming_the_download() -> None:
    model = Moondream("vikhyatk/moondream2", revision="0000000000000000000000000000000000000000")
    with pytest.raises(CheckpointNotAvailableError, match="hf download vikhyatk/moondream2"):
        model.load()
    assert not model.loaded


@pytest.mark.parametrize("damage", ["cut weights", "no weights", "bad tokenizer"])
def test_a_damaged_checkpoint_gives_a_clear_error_and_a_later_good_load_works(
    model: Moondream, tmp_path: Path, damage: str
) -> None:
    target = tmp_path / "damaged"
    shutil.copytree(Path(model.entry.source), target)
    weights, tokenizer = target / "model.safetensors", target / "tokenizer.json"
    if damage == "cut weights":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif damage == "no weights":
        weights.unlink()
    else:
        tokenizer.write_text("{not json")
    damaged = Moondream(str(target))
    with pytest.raises(CheckpointError, match="download the checkpoint again"):
        damaged.load()
    assert not damaged.loaded
    shutil.copytree(Path(model.entry.source), target, dirs_exist_ok=True)
    assert damaged.caption(shapes.draw(RED_CIRCLE).image, length="short") == "A red circle."


@pytest.mark.timeout(300)
def test_int8_is_opt_in_and_keeps_the_shipped_answers(model: Moondream) -> None:
    quantized = Moondream("shapes-moondream", int8=True)
    quantized.load()
    int8_linear = torch.ao.nn.quantized.dynamic.Linear
    assert not any(isinstance(module, torch.nn.Linear) for module in quantized.network.modules())
    assert not any(isinstance(module, int8_linear) for module in model.network.modules())
    for scene in shapes.all_scenes()[::6]:
        image = quantized.encode_image(shapes.draw(scene).image)
        assert quantized.caption(image, length="short") == shapes.caption_of_length(scene, "short")
        for question, answer in shapes.questions(scene):
            assert quantized.query(image, question) == answer
    boxes = quantized.detect(shapes.draw(RED_CIRCLE).image, "circle")
    assert len(boxes) == 1 and boxes[0]["x_min"] < 0.5 < boxes[0]["x_max"]
    with pytest.raises(RequestError, match="int8"):
        Moondream("shapes-moondream", int8="yes")  # type: ignore[arg-type]


@pytest.mark.timeout(120)
@pytest.mark.usefixtures("two_prefill_threads_one_decode")
def test_prefill_uses_the_prefill_threads_and_decoding_the_decode_threads(model: Moondream) -> None:
    model.image_cache.clear()
    threads: list[tuple[int, int]] = []  # (positions fed, torch threads) at each pass of the text model

    def record(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        threads.append((args[0].shape[1], torch.get_num_threads()))

    before = torch.get_num_threads()
    with hook(model.network.text, record):
        assert model.caption(shapes.draw(RED_CIRCLE).image, length="short") == "A red circle."
        assert model.detect(shapes.draw(RED_CIRCLE).image, "circle")
    prefills, decodes = [t for n, t in threads if n > 1], [t for n, t in threads if n == 1]
    assert len(prefills) == 3, "the picture once, the caption's prompt, the detect prompt"
    assert set(prefills) == {2} and decodes and set(decodes) == {1}
    assert torch.get_num_threads() == before, "torch's thread count is put back"


# -- prompts, the answer token and resizing as the reference does them (issue #22) ----------


def test_full_size_prompts_end_a_query_with_the_answer_token_twice() -> None:
    tokens = MoondreamConfig().tokenizer
    encode = {"Why?": [5195, 30], " face": [1986]}.__getitem__  # stand-in ids: the layout is what is pinned
    assert query_prompt(tokens, encode, "Why?") == [1, 15381, 2, 5195, 30, 3, 3]
    assert caption_prompt(tokens, "short") == [1, 32708, 2, 12492, 3]
    assert caption_prompt(tokens, "normal") == [1, 32708, 2, 6382, 3]
    assert caption_prompt(tokens, "long") == [1, 32708, 2, 4059, 3]
    assert locate_prompt(tokens, encode, "detect", "face") == [1, 7235, 476, 2, 1986, 3]
    assert locate_prompt(tokens, encode, "point", "face") == [1, 2581, 2, 1986, 3]


def test_the_shipped_checkpoint_gets_exactly_these_prompt_ids(model: Moondream) -> None:
    tokens = model.network.config.tokenizer
    assert [caption_prompt(tokens, length) for length in shapes.CAPTION_LENGTHS] == [
        [1, 426, 2, 423, 3], [1, 426, 2, 422, 3], [1, 426, 2, 421, 3],
    ]
    assert model._query_ids("What shape is it?") == [1, 424, 2, 364, 296, 281, 404, 40, 3, 3]
    assert locate_prompt(tokens, model._text_ids, "detect", "circle") == [1, 410, 2, 339, 3]
    assert locate_prompt(tokens, model._text_ids, "point", "circle") == [1, 417, 2, 339, 3]


def test_training_builds_each_prompt_as_inference_does(model: Moondream) -> None:
    tokens = model.network.config.tokenizer
    inference = [caption_prompt(tokens, length) for length in shapes.CAPTION_LENGTHS]
    inference += [model._query_ids(question) for question, _ in shapes.questions(RED_CIRCLE)]
    inference += [locate_prompt(tokens, model._text_ids, k, s) for k in ("detect", "point") for s in shapes.SHAPES]
    source, rng = PictureSource(Mix(canonical=1.0, varied=0.0)), random.Random(0)
    config, weights = model.network.config, Recipe().task_weights
    pictures = [(scene, source.drawing(rng, scene)) for scene in rng.choices(shapes.all_scenes(), k=400)]
    trained = [make_example(rng, model.tokenizer, config, picture, weights).prompt for picture in pictures]
    assert all(prompt in inference for prompt in trained)
    assert len({tuple(prompt) for prompt in trained}) == len(inference), "every prompt is trained on"


@pytest.mark.timeout(120)
def test_each_examples_token_loss_in_a_batch_is_its_loss_alone() -> None:
    """What mining hard pictures scores with: right-padded rows of other lengths change nothing."""
    tokenizer, sizes = build_tiny_tokenizer(), TinySizes()
    torch.manual_seed(0)
    objective = ShapesObjective(build_network(build_config(tokenizer, sizes), sizes).eval())
    rng, source, scenes = random.Random(8), PictureSource(), shapes.all_scenes()
    config, captions = objective.net.config, (1.0, 0.0, 0.0, 0.0)
    examples = [make_example(rng, tokenizer, config, (s, source.drawing(rng, s)), captions) for s in scenes[:5]]
    assert len({len(e.answer) for e in examples}) > 1, "answers of several lengths"
    with torch.no_grad():
        together = objective.token_losses(examples)
        alone = torch.stack([objective([example]).loss for example in examples])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)


def test_the_shape_map_names_the_shape_from_the_tokens_over_its_middle() -> None:
    over = tokens_over_middle((0.0, 0.0, 0.5, 0.5), 16).view(16, 16)
    assert over.nonzero().tolist() == [[row, col] for row in range(2, 6) for col in range(2, 6)]
    tiny = tokens_over_middle((0.70, 0.10, 0.71, 0.11), 16).view(16, 16)
    assert tiny.nonzero().tolist() == [[1, 11]], "a shape smaller than a token still gets the one under it"


@pytest.mark.timeout(120)
def test_the_shape_map_loss_adds_to_the_same_examples_and_trains_a_head_that_is_not_saved() -> None:
    tokenizer, recipe = build_tiny_tokenizer(), Recipe(batch_size=6, task_weights=(1, 0, 0, 0))
    config = build_config(tokenizer, recipe.sizes)
    plain = make_batch_maker(tokenizer, config, recipe)(random.Random(3))
    mapped = make_batch_maker(tokenizer, config, replace(recipe, shape_map_weight=1.0))(random.Random(3))
    assert mapped["examples"] == plain["examples"], "the option draws the pictures and tasks a run drew without it"
    for example, name in zip(mapped["examples"], mapped["shape_names"], strict=True):
        assert name in tokenizer.decode(example.answer), "each caption names the shape it is taught"
    torch.manual_seed(0)
    net = build_network(config, recipe.sizes)
    objective = ShapesObjective(net, shape_map_weight=1.0)
    with_map = objective(**mapped).loss
    with_map.backward()
    assert objective.shape_map is not None and objective.shape_map.weight.grad is not None
    assert with_map > ShapesObjective(net)(plain["examples"]).loss
    assert not any("shape_map" in name for name in net.state_dict()), "the head is not part of the checkpoint"


@pytest.mark.timeout(120)
def test_tasks_per_picture_draw_several_examples_of_one_picture_that_share_its_encoder_pass() -> None:
    tokenizer = build_tiny_tokenizer()
    recipe = Recipe(batch_size=3, tasks_per_picture=3, canonical_fraction=0.0, varied_fraction=1.0)
    config = build_config(tokenizer, recipe.sizes)
    batch = make_batch_maker(tokenizer, config, recipe)(random.Random(4))
    examples, names = batch["examples"], batch["shape_names"]
    assert len(examples) == len(names) == 9
    for start in range(0, 9, 3):
        assert len({id(e.drawing) for e in examples[start : start + 3]}) == 1, "three tasks on each picture"
        assert len(set(names[start : start + 3])) == 1
    assert len({id(e.drawing) for e in examples}) == 3
    torch.manual_seed(0)
    objective = ShapesObjective(build_network(config, recipe.sizes))
    encoded: list[int] = []
    encode = objective.net.vision.encode
    objective.net.vision.encode = lambda pixels: encoded.append(pixels.shape[0]) or encode(pixels)  # type: ignore[method-assign]
    with torch.no_grad():
        shared = objective(examples).loss
        own_copies = [replace(e, drawing=replace(e.drawing, image=e.drawing.image.copy())) for e in examples]
        apart = objective(own_copies).loss
    crops_of = [len(crops.overlap_crops(e.drawing.image, config.vision).pixels) for e in examples]
    assert encoded == [sum(crops_of[::3]), sum(crops_of)], "each picture goes through the encoder once"
    torch.testing.assert_close(shared, apart, rtol=1e-5, atol=1e-6)


@pytest.mark.timeout(300)
def test_a_short_training_run_repeats_from_its_seed_and_its_checkpoint_loads(tmp_path: Path) -> None:
    recipe = Recipe(batch_size=4, warmup_steps=1)
    first = train_model(2, 2, seed=5, recipe=recipe, log=lambda _: None)
    again = train_model(2, 2, seed=5, recipe=recipe, log=lambda _: None)
    assert first.vision.losses == again.vision.losses and first.text.losses == again.text.losses
    save(first.tokenizer, first.net, tmp_path)
    answer = Moondream(str(tmp_path)).query(shapes.draw(RED_CIRCLE).image, "What shape is it?", max_new_tokens=3)
    assert isinstance(answer, str)


def test_training_refines_a_patch_8_checkpoint_into_patch_4_seeing_the_same_pixels(tmp_path: Path) -> None:
    """The shipped checkpoint had 8 px patches until 2026-12: the patch 4 recipe starts from it with
    the same patch features of a crop as it gave that crop upscaled twice, and every other weight."""
    tokenizer, coarse_sizes = build_tiny_tokenizer(), TinySizes(patch=8, max_context=256)
    torch.manual_seed(0)
    coarse = build_network(build_config(tokenizer, coarse_sizes), coarse_sizes)
    save(tokenizer, coarse, tmp_path)
    fine = load_init(tmp_path, build_config(tokenizer, TinySizes()))
    crop = torch.rand(1, 3, 64, 64) * 2 - 1
    upscaled = crop.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    with torch.no_grad():
        seen_now = fine.vision.patch_emb(patchify(crop, 4))
        seen_before = coarse.vision.patch_emb(patchify(upscaled, 8))
    torch.testing.assert_close(seen_now, seen_before, rtol=1e-4, atol=1e-5)
    dim = coarse_sizes.vision_dim
    fine_grid, coarse_grid = fine.vision.pos_emb.view(16, 16, dim), coarse.vision.pos_emb.view(8, 8, dim)
    assert torch.equal(fine_grid[0, 0], coarse_grid[0, 0]) and torch.equal(fine_grid[-1, -1], coarse_grid[-1, -1])
    refined = {"vision.patch_emb.weight", "vision.pos_emb"}
    kept = {name: tensor for name, tensor in coarse.state_dict().items() if name not in refined}
    assert all(torch.equal(fine.state_dict()[name], tensor) for name, tensor in kept.items())
    save(tokenizer, fine, tmp_path / "fine")
    with pytest.raises(ValueError, match="cannot refine 4 px patches into 8 px ones"):
        load_init(tmp_path / "fine", build_config(tokenizer, coarse_sizes))


def test_training_spreads_a_checkpoints_patches_over_larger_crops_seeing_the_same_pixels(tmp_path: Path) -> None:
    """``--crop-size 128 --patch 8`` from a 64 px, patch 4 checkpoint: the same 16 x 16 grid, each
    patch's features those the checkpoint gave the crop box-averaged to 64 px, every other weight kept."""
    tokenizer, sizes = build_tiny_tokenizer(), TinySizes()
    torch.manual_seed(0)
    small = build_network(build_config(tokenizer, sizes), sizes)
    save(tokenizer, small, tmp_path)
    larger = load_init(tmp_path, build_config(tokenizer, replace(sizes, crop_size=128, patch=8)))
    assert larger.config.vision.crop_size == 128 and larger.config.vision.grid == 16
    crop = torch.rand(1, 3, 128, 128) * 2 - 1
    with torch.no_grad():
        seen_now = larger.vision.patch_emb(patchify(crop, 8))
        seen_before = small.vision.patch_emb(patchify(F.avg_pool2d(crop, 2), 4))
    torch.testing.assert_close(seen_now, seen_before, rtol=1e-4, atol=1e-5)
    kept = {name: tensor for name, tensor in small.state_dict().items() if name != "vision.patch_emb.weight"}
    assert all(torch.equal(larger.state_dict()[name], tensor) for name, tensor in kept.items())
    with pytest.raises(ValueError, match="cannot spread 4 px patches over 6 px ones"):
        load_init(tmp_path, build_config(tokenizer, replace(sizes, crop_size=96, patch=6)))


def test_training_on_larger_crops_of_the_same_patches_keeps_the_kernel_and_interpolates_positions(
    tmp_path: Path,
) -> None:
    """``--crop-size 96 --max-context 704`` from a 64 px, patch 4 checkpoint: a 24 x 24 grid whose
    corner positions are the checkpoint's, the patch kernel and every other weight kept; too small a
    context says which to pass."""
    tokenizer, sizes = build_tiny_tokenizer(), TinySizes()
    torch.manual_seed(0)
    small = build_network(build_config(tokenizer, sizes), sizes)
    save(tokenizer, small, tmp_path)
    with pytest.raises(ValueError, match="give 576 image tokens: pass --max-context 704"):
        build_config(tokenizer, replace(sizes, crop_size=96))
    larger = load_init(tmp_path, build_config(tokenizer, replace(sizes, crop_size=96, max_context=704)))
    assert larger.config.vision.grid == 24 and larger.config.text.max_context == 704
    dim = sizes.vision_dim
    fine, coarse = larger.vision.pos_emb.view(24, 24, dim), small.vision.pos_emb.view(16, 16, dim)
    torch.testing.assert_close(fine[[0, -1], [0, -1]], coarse[[0, -1], [0, -1]])
    kept = {name: tensor for name, tensor in small.state_dict().items() if name != "vision.pos_emb"}
    assert all(torch.equal(larger.state_dict()[name], tensor) for name, tensor in kept.items())


def test_training_with_more_crops_starts_from_every_weight_of_the_checkpoint(tmp_path: Path) -> None:
    """``--max-crops 8`` from a checkpoint tiled into at most 4: the same network, more local crops."""
    tokenizer, sizes = build_tiny_tokenizer(), TinySizes()
    torch.manual_seed(0)
    four = build_network(build_config(tokenizer, sizes), sizes)
    save(tokenizer, four, tmp_path)
    eight = load_init(tmp_path, build_config(tokenizer, replace(sizes, max_crops=8)))
    assert eight.config.vision.max_crops == 8
    assert four.state_dict().keys() == eight.state_dict().keys()
    assert all(torch.equal(eight.state_dict()[name], tensor) for name, tensor in four.state_dict().items())


def test_training_grows_the_vision_encoder_of_a_checkpoint_without_changing_what_it_sees(tmp_path: Path) -> None:
    """``--vision-layers`` beyond the checkpoint's: the new blocks start as identities (then train)."""
    tokenizer, sizes = build_tiny_tokenizer(), TinySizes()
    torch.manual_seed(0)
    shallow = build_network(build_config(tokenizer, sizes), sizes).eval()
    save(tokenizer, shallow, tmp_path)
    deeper = load_init(tmp_path, build_config(tokenizer, replace(sizes, vision_layers=4))).eval()
    assert len(deeper.vision.blocks) == 4
    picture = shapes.random_picture(random.Random(2)).image.convert("RGB")
    with torch.no_grad():
        torch.testing.assert_close(image_embeddings(deeper, picture), image_embeddings(shallow, picture))
    grown = deeper.vision.blocks[3]
    assert grown.attn.qkv.weight.std() > 0 and not grown.mlp.fc2.weight.any()
    kept = shallow.state_dict()
    assert all(torch.equal(deeper.state_dict()[name], tensor) for name, tensor in kept.items())
    save(tokenizer, deeper, tmp_path / "deeper")
    with pytest.raises(ValueError, match="has 4 vision layers and the recipe 2: pass --vision-layers 4"):
        load_init(tmp_path / "deeper", build_config(tokenizer, sizes))


def test_training_widens_the_mlps_of_a_checkpoint_without_changing_what_it_computes(tmp_path: Path) -> None:
    """``--vision-ff``, ``--proj-inner``, ``--text-ff`` beyond the checkpoint's: the same image
    embeddings and text states, new hidden units that can train; narrower ones are refused."""
    tokenizer, sizes = build_tiny_tokenizer(), TinySizes()
    torch.manual_seed(0)
    narrow = build_network(build_config(tokenizer, sizes), sizes).eval()
    save(tokenizer, narrow, tmp_path)
    wider_sizes = replace(sizes, vision_ff=384, proj_inner=320, text_ff=512)
    wide = load_init(tmp_path, build_config(tokenizer, wider_sizes)).eval()
    assert wide.vision.blocks[0].mlp.fc1.out_features == 384 and wide.text.blocks[0].mlp.fc1.out_features == 512
    picture = shapes.random_picture(random.Random(2)).image.convert("RGB")
    states = torch.randn(1, 6, sizes.text_dim)
    with torch.no_grad():
        torch.testing.assert_close(image_embeddings(wide, picture), image_embeddings(narrow, picture))
        torch.testing.assert_close(wide.text(states, 0), narrow.text(states, 0))
    grown = wide.vision.proj_mlp
    assert grown.fc1.weight[256:].std() > 0 and not grown.fc2.weight[:, 256:].any()
    save(tokenizer, wide, tmp_path / "wide")
    narrowed = r"text\.blocks\.0\.mlp\.fc1 has 512 hidden units and the recipe 384: .* --text-ff"
    with pytest.raises(ValueError, match=narrowed):
        load_init(tmp_path / "wide", build_config(tokenizer, replace(wider_sizes, text_ff=384)))


def test_vision_pretraining_learns_from_the_local_crops_and_the_projection() -> None:
    sizes = TinySizes()
    net = build_network(build_config(build_tiny_tokenizer(), sizes), sizes)
    wide_only = shapes.RandomSettings(aspect=(3.0, 3.0), short_side=(100, 100))
    wide = shapes.random_picture(random.Random(1), RED_CIRCLE, wide_only)
    picture = load_image(wide.data)
    assert crops.overlap_crops(picture, net.config.vision).tiling == (1, 3), "a wide picture has local crops"
    labels = torch.tensor([scene_labels(RED_CIRCLE)])
    PictureClassifier(net)([picture], labels).loss.backward()
    assert net.vision.proj_mlp.fc1.weight.grad is not None
    patches_of_local_crops = net.vision.proj_mlp.fc1.weight.grad[:, sizes.vision_dim :]
    assert patches_of_local_crops.abs().sum() > 0


@pytest.mark.timeout(60)
def test_the_answer_token_may_come_first_but_never_later(model: Moondream, red_circle: EncodedImage) -> None:
    answer = model.network.config.tokenizer.answer_id

    def favour_answer(module: torch.nn.Module, args: object, logits: torch.Tensor) -> torch.Tensor:
        return logits + 1e4 * torch.nn.functional.one_hot(torch.tensor(answer), logits.shape[-1])

    handle = model.network.text.lm_head.register_forward_hook(favour_answer)
    try:
        with torch.inference_mode():
            ids = model._query_ids("What shape is it?")
            token_ids = generate_text(model.network, red_circle, ids, GenerationOptions(max_new_tokens=4))
    finally:
        handle.remove()
    assert token_ids[0] == answer, "the first generated token may be the answer token"
    assert answer not in token_ids[1:], "from the second token on it is forbidden"


def test_resizing_without_pyvips_is_pils_lanczos(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(crops, "PYVIPS", None)  # as where pyvips or libvips is not installed
    picture = shapes.draw(RED_CIRCLE, 50).image
    expected = np.asarray(picture.resize((64, 40), Image.Resampling.LANCZOS))
    np.testing.assert_array_equal(crops.resize(picture, 64, 40), expected)


def test_resizing_with_pyvips_is_libvips() -> None:
    pyvips = pytest.importorskip("pyvips", exc_type=ImportError)
    assert crops.PYVIPS is pyvips, "installed, pyvips is what the crops are resized with"
    picture = shapes.draw(RED_CIRCLE, 50).image
    for width, height in [(64, 40), (160, 96), (33, 200)]:
        resized = crops.resize(picture, width, height)
        assert resized.shape == (height, width, 3) and resized.dtype == np.uint8
        lanczos = np.asarray(picture.resize((width, height), Image.Resampling.LANCZOS)).astype(int)
        assert 0 < np.abs(resized.astype(int) - lanczos).mean() < 8, "libvips' own pixels, close to PIL's"


@pytest.mark.timeout(60)
def test_on_a_cpu_the_crops_are_encoded_one_at_a_time_with_the_numbers_of_all_at_once() -> None:
    fp32 = Moondream("shapes-moondream", dtype="float32")
    fp32.load()
    net = fp32.network
    pixels = crops.overlap_crops(shapes.draw(RED_CIRCLE).image.resize((200, 90)), net.config.vision).pixels
    batches: list[int] = []
    net.vision.patch_emb.register_forward_hook(lambda _, args, output: batches.append(len(output)))
    with torch.inference_mode():
        one_by_one = encoded_crops(net, pixels)
        all_at_once = net.vision.encode(pixels)
    assert len(pixels) > 2 and batches == [1] * len(pixels) + [len(pixels)]
    torch.testing.assert_close(one_by_one, all_at_once, rtol=1e-5, atol=1e-5)


@pytest.mark.timeout(60)
def test_in_bf16_the_crops_and_the_image_prefix_attend_in_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a CPU with bf16 instructions (forced here), the vision encoder and the image prefix (which
    attends both ways) go through ``attend_in_bf16`` (from 16 queries here, for the shipped
    checkpoint's 64 patches); the first-token logits stay within bf16's differences of the fused
    operator's."""
    monkeypatch.setattr(attention, "has_fast_bf16", lambda: True)
    monkeypatch.setattr(attention, "MANY_QUERIES", 16)
    lengths: list[int] = []
    in_bf16 = attention.attend_in_bf16

    def noted(query: torch.Tensor, *args: Any) -> torch.Tensor:
        lengths.append(query.shape[2])
        return in_bf16(query, *args)

    monkeypatch.setattr(attention, "attend_in_bf16", noted)
    model = Moondream("shapes-moondream", dtype="bfloat16")
    model.load()
    picture = shapes.draw(RED_CIRCLE).image
    ours = model._first_logits(picture, "What shape is it?").float()
    config = model.network.config
    patches = (config.vision.crop_size // config.vision.enc_patch_size) ** 2
    prefix = 1 + patches  # the BOS and an image token a patch
    assert lengths.count(prefix) == config.text.n_layers and patches in lengths
    monkeypatch.setattr(attention, "MANY_QUERIES", 10**9)
    fused = model._first_logits(picture, "What shape is it?").float()
    assert not torch.equal(ours, fused)
    assert torch.allclose(ours, fused, atol=0.02 * float(fused.abs().max()), rtol=0)
