"""The recipes that make the shipped transformers checkpoints: batches train on the answer only,
a run is repeatable from its seed, and what it saves loads through ``get_model`` as its family.
(Full runs take minutes to hours; these run two steps of each stage.)"""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path
from types import ModuleType

import pytest
import torch
from transformers import AutoModelForImageTextToText

from vlm_notebook import shapes
from vlm_notebook.registry import get_model
from vlm_notebook.training import __main__ as training_cli
from vlm_notebook.training import card, gemma4, moondream, qwen2vl, smolvlm
from vlm_notebook.training.loop import IGNORE_INDEX, save

#: recipe module -> (the answer's end token, the class get_model gives for what it saves)
RECIPES: dict[str, tuple[ModuleType, str, str]] = {
    "smolvlm": (smolvlm, smolvlm.EOS, "SmolVLM"),
    "qwen2vl": (qwen2vl, qwen2vl.IM_END, "Qwen2VL"),
    "gemma4": (gemma4, gemma4.TURN_END, "TransformersModel"),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("family", RECIPES)
def test_a_batch_trains_on_each_answer_and_its_end_only(family: str) -> None:
    recipes, end, _ = RECIPES[family]
    processor = recipes.build_processor()
    batch = recipes.make_batch_maker(processor, 6)(random.Random(3))
    answers = {answer for scene in shapes.all_scenes() for _, answer in shapes.examples(scene, "en")}
    if family == "qwen2vl":
        answers |= {answer for scene in shapes.all_scenes() for language in shapes.CAPTION_LANGUAGES
                    for _, answer in shapes.examples(scene, language)}
    for ids, labels in zip(batch["input_ids"], batch["labels"], strict=True):
        kept = ids[labels != IGNORE_INDEX]
        assert kept.tolist() == labels[labels != IGNORE_INDEX].tolist()
        text = processor.tokenizer.decode(kept)
        assert text.endswith(end) and text[: -len(end)].lstrip() in answers, text  # SmolVLM: " " + answer


@pytest.mark.timeout(300)
@pytest.mark.parametrize("family", RECIPES)
def test_a_short_run_repeats_from_its_seed_and_its_checkpoint_loads(family: str, tmp_path: Path) -> None:
    recipes, _, class_name = RECIPES[family]
    recipe = recipes.Recipe(batch_size=4, warmup_steps=1)
    first = recipes.train_model(2, 2, seed=5, recipe=recipe, log=lambda _: None)
    again = recipes.train_model(2, 2, seed=5, recipe=recipe, log=lambda _: None)
    assert first.vision.losses == again.vision.losses and first.text.losses == again.text.losses
    save(first.processor, first.model, tmp_path)
    model = get_model(tmp_path, dtype="float32")
    assert type(model).__name__ == class_name
    answer = model.query(shapes.draw(shapes.all_scenes()[0]).image, "What shape is it?", max_new_tokens=3)
    assert isinstance(answer, str)


@pytest.mark.timeout(120)
def test_smolvlm_carries_a_checkpoint_with_smaller_patches_over_seeing_the_same() -> None:
    """A checkpoint of 64 px tiles at patch 8 (the shipped ones until 2026-12) starts the 128 px,
    patch 16 recipe seeing a picture as it saw that picture at half the size."""
    processor, sizes = smolvlm.build_processor(), smolvlm.TinySizes()
    torch.manual_seed(0)
    config = smolvlm.build_config(processor, sizes)
    config.vision_config.image_size, config.vision_config.patch_size = 64, 8
    saved = AutoModelForImageTextToText.from_config(config)
    carried = smolvlm.with_larger_patches(saved, smolvlm.build_model(processor, sizes))
    small = torch.rand(1, 3, 64, 64) * 2 - 1
    large = small.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    with torch.no_grad():
        seen_before = saved.model.vision_model(small).last_hidden_state
        seen_now = carried.model.vision_model(large).last_hidden_state
    torch.testing.assert_close(seen_now, seen_before, rtol=1e-4, atol=1e-5)
    config.vision_config.image_size = 96  # a 12 x 12 grid: no patch size carries it over
    other_grid = AutoModelForImageTextToText.from_config(config)
    with pytest.raises(ValueError, match="another grid"):
        smolvlm.with_larger_patches(other_grid, smolvlm.build_model(processor, sizes))


@pytest.mark.parametrize("family", [*RECIPES, "moondream"])
def test_the_recorded_command_repeats_every_option_of_the_run(family: str) -> None:
    moondream_only = (" --region-weight 1 --small-shapes 0.5 --task-weights 4 4 2 1 --vision-layers 3"
                      " --background-weights 1 1 2 --shape-weights 2 1 1 2 --crop-size 128 --max-crops 8 --patch 8"
                      " --hard-pictures 600 60 --hard-fraction 0.3 --vision-ff 512 --proj-inner 384 --text-ff 768"
                      " --shape-map-weight 0.5 --tasks-per-picture 3")
    extra = moondream_only if family == "moondream" else ""
    given = (f"{family} --steps 7 --seed 3 --vision-steps 0 --vision-lr 3e-4 --threads 1 --init-from DIR"
             " --batch-size 16 --lr 5e-4"
             f" --canonical-fraction 0.15 --varied-per-scene 2000{extra} --out /tmp/run")
    args = training_cli._parser().parse_args(given.split())
    command = training_cli._command(args)
    assert command.startswith("python -m vlm_notebook.training ")
    assert training_cli._parser().parse_args(command.split()[3:]) == args
    recipes = moondream if family == "moondream" else RECIPES[family][0]
    recipe = training_cli._given(recipes.Recipe(), args)
    assert (recipe.batch_size, recipe.lr, recipe.canonical_fraction, recipe.varied_per_scene) == (16, 5e-4, 0.15, 2000)
    assert recipe.vision_lr == 3e-4
    if family == "moondream":
        assert (recipe.region_weight, recipe.small_shapes, recipe.task_weights) == (1, 0.5, (4, 4, 2, 1))
        assert (recipe.background_weights, recipe.shape_weights) == ((1, 1, 2), (2, 1, 1, 2))
        drawn = moondream._task_mix(recipe.as_dict())
        assert "backgrounds in proportions white 1, black 1, gray 2; shapes in proportions circle 2, square 1," in drawn
        assert (recipe.hard_pictures, recipe.hard_fraction) == ((600, 60), 0.3)
        assert recipe.shape_map_weight == 0.5 and "its loss weighted 0.5" in drawn
        assert recipe.tasks_per_picture == 3 and "point 1, 3 for each picture;" in drawn
        grown = {"vision_layers": 3, "crop_size": 128, "max_crops": 8, "patch": 8}
        wider = {"vision_ff": 512, "proj_inner": 384, "text_ff": 768}
        assert recipe.sizes == replace(moondream.TinySizes(), **grown, **wider)


@pytest.mark.parametrize("name", ["shapes-smolvlm", "shapes-qwen2vl", "shapes-gemma4", "shapes-moondream"])
def test_each_shipped_card_is_what_its_training_record_writes(name: str) -> None:
    """A card edited by hand, or left behind when its record or the card's wording changed, fails here."""
    directory = training_cli.FAMILY_DEFAULTS[name.removeprefix("shapes-")].out
    record = json.loads((directory / "training.json").read_text(encoding="utf-8"))
    write = moondream.model_card if name == "shapes-moondream" else card.model_card
    assert (directory / "README.md").read_text(encoding="utf-8") == write(record)
