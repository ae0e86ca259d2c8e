"""The recipes that make the shipped transformers checkpoints: batches train on the answer only,
a run is repeatable from its seed, and what it saves loads through ``get_model`` as its family.
(Full runs take minutes to hours; these run two steps of each stage.)"""

from __future__ import annotations

import random
from pathlib import Path
from types import ModuleType

import pytest

from vlm_notebook import shapes
from vlm_notebook.registry import get_model
from vlm_notebook.training import gemma4, qwen2vl, smolvlm
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
