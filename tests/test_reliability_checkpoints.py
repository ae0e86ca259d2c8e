"""Bad checkpoints: a clear error, nothing half-loaded, and a later good load of the same object works."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from reliability_cases import covers
from reliability_support import RED_CAPTION, picture

from vlm_notebook import get_model
from vlm_notebook.errors import CheckpointError, CheckpointNotAvailableError
from vlm_notebook.models import Qwen2VL, SmolVLM
from vlm_notebook.models.base import VLM
from vlm_notebook.registry import CHECKPOINTS_DIR, PINNED_REVISIONS

FAMILIES: dict[str, type[VLM]] = {"shapes-smolvlm": SmolVLM, "shapes-qwen2vl": Qwen2VL}
PROCESSOR_CONFIG = {"shapes-smolvlm": "processor_config.json", "shapes-qwen2vl": "preprocessor_config.json"}


def copy_of(name: str, tmp_path: Path) -> Path:
    copy = tmp_path / name
    shutil.copytree(CHECKPOINTS_DIR / name, copy)
    return copy


def refused_then_repaired(name: str, copy: Path, file: str, message: str) -> None:
    """Loading fails with ``message``, leaves nothing loaded, and works once ``file`` is restored."""
    model = FAMILIES[name](str(copy))
    for _ in range(2):  # the same error again: no state left from the first attempt
        with pytest.raises(CheckpointError, match=message):
            model.load()
        assert not model.loaded
        assert not hasattr(model, "model") and not hasattr(model, "processor"), "nothing half-loaded is kept"
    shutil.copy(CHECKPOINTS_DIR / name / file, copy / file)
    assert model.load().loaded
    assert model.caption_with(picture()) == RED_CAPTION


@covers("missing-weights", "nothing-half-loaded")
@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", FAMILIES)
def test_missing_weights(name: str, tmp_path: Path) -> None:
    copy = copy_of(name, tmp_path)
    (copy / "model.safetensors").unlink()
    refused_then_repaired(name, copy, "model.safetensors", r"Cannot load the weights of the checkpoint in .*download")


@covers("missing-processor-files", "nothing-half-loaded")
@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("part", ["tokenizer", "image-processor"])
def test_missing_processor_files(name: str, part: str, tmp_path: Path) -> None:
    copy = copy_of(name, tmp_path)
    file = "tokenizer.json" if part == "tokenizer" else PROCESSOR_CONFIG[name]
    (copy / file).unlink()
    refused_then_repaired(name, copy, file, r"Cannot load the processor of the checkpoint in .*complete")


@covers("missing-chat-template", "nothing-half-loaded")
@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", FAMILIES)
def test_missing_chat_template(name: str, tmp_path: Path) -> None:
    copy = copy_of(name, tmp_path)
    (copy / "chat_template.jinja").unlink()
    refused_then_repaired(name, copy, "chat_template.jinja", r"no chat template \(chat_template.jinja\).*again")


@covers("missing-config")
@pytest.mark.timeout(60)
def test_a_directory_without_config_is_not_a_checkpoint(tmp_path: Path) -> None:
    copy = copy_of("shapes-smolvlm", tmp_path)
    (copy / "config.json").unlink()
    empty = tmp_path / "empty"
    empty.mkdir()
    for directory in (copy, empty):
        for make in (SmolVLM, get_model):
            with pytest.raises(CheckpointError, match=r"has no config.json: it is not a checkpoint directory"):
                make(str(directory))


@covers("corrupt-safetensors", "nothing-half-loaded")
@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("damage", ["truncated", "random-bytes"])
def test_corrupt_safetensors(name: str, damage: str, tmp_path: Path) -> None:
    copy = copy_of(name, tmp_path)
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000] if damage == "truncated" else os.urandom(50_000))
    refused_then_repaired(name, copy, "model.safetensors", r"Cannot load the weights of the checkpoint in")


@covers("weights-of-another-model", "nothing-half-loaded")
@pytest.mark.timeout(120)
def test_weights_of_another_model_are_refused_not_filled_with_random_values(tmp_path: Path) -> None:
    copy = copy_of("shapes-smolvlm", tmp_path)
    shutil.copy(CHECKPOINTS_DIR / "shapes-qwen2vl" / "model.safetensors", copy / "model.safetensors")
    refused_then_repaired(
        "shapes-smolvlm", copy, "model.safetensors",
        r"weights in .* lack \d+ of the model's tensors .*belong to another model",
    )


@covers("config-of-another-family")
@pytest.mark.timeout(60)
def test_a_checkpoint_of_another_family_names_the_class_to_use() -> None:
    with pytest.raises(CheckpointError, match=r"'shapes-qwen2vl' is a qwen2vl model, not smolvlm.*Qwen2VL"):
        SmolVLM("shapes-qwen2vl")
    with pytest.raises(CheckpointError, match=r"'shapes-smolvlm' is a smolvlm model, not qwen2vl.*SmolVLM"):
        Qwen2VL("shapes-smolvlm")
    directory = str(CHECKPOINTS_DIR / "shapes-qwen2vl")
    with pytest.raises(CheckpointError, match=r"is a qwen2vl model, not smolvlm: load it with Qwen2VL"):
        SmolVLM(directory)
    assert isinstance(get_model(directory), Qwen2VL)


@covers("config-of-another-family", "nothing-half-loaded")
@pytest.mark.timeout(120)
def test_a_config_of_another_family_beside_smolvlm_files_is_refused(tmp_path: Path) -> None:
    copy = copy_of("shapes-smolvlm", tmp_path)
    shutil.copy(CHECKPOINTS_DIR / "shapes-qwen2vl" / "config.json", copy / "config.json")
    with pytest.raises(CheckpointError, match="is a qwen2vl model, not smolvlm"):
        SmolVLM(str(copy))
    model = Qwen2VL(str(copy))  # what the config claims: SmolVLM's weights and processor do not fit it
    with pytest.raises(CheckpointError, match=r"Cannot load the (processor|weights) of the checkpoint"):
        model.load()
    assert not model.loaded and not hasattr(model, "model")
    shutil.copy(CHECKPOINTS_DIR / "shapes-smolvlm" / "config.json", copy / "config.json")
    assert SmolVLM(str(copy)).caption(picture()) == RED_CAPTION


@covers("config-of-another-family")
@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("config", "message"),
    [('{"model_type": "llama"}', r"holds a 'llama' model, which vlm-notebook does not support; supported model types"),
     ("{not json", r"config.json' is not valid JSON"),
     ("[1, 2]", r"config.json' is not valid JSON")],
    ids=["unsupported-type", "invalid-json", "json-list"],
)
def test_a_config_of_an_unknown_kind_is_refused(config: str, message: str, tmp_path: Path) -> None:
    copy = copy_of("shapes-smolvlm", tmp_path)
    (copy / "config.json").write_text(config)
    for make in (SmolVLM, get_model):
        with pytest.raises(CheckpointError, match=message):
            make(str(copy))


SMOLVLM = "HuggingFaceTB/SmolVLM-256M-Instruct"


@covers("not-available-offline", "nothing-half-loaded")
@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("make", "command"),
    [(lambda: get_model("smolvlm-256m"), f"hf download {SMOLVLM} --revision {PINNED_REVISIONS[SMOLVLM]}"),
     (lambda: get_model("qwen2-vl-2b"), "hf download Qwen/Qwen2-VL-2B-Instruct"),
     (lambda: SmolVLM("someone/nonexistent-vlm"), "hf download someone/nonexistent-vlm")],
    ids=["smolvlm-256m", "qwen2-vl-2b", "unknown-hub-id"],
)
def test_a_hub_checkpoint_not_in_the_cache_says_how_to_fetch_it(make: object, command: str) -> None:
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    model = make()  # type: ignore[operator]
    for _ in range(2):
        with pytest.raises(CheckpointNotAvailableError, match=rf"not in the local Hugging Face cache.*`{command}`"):
            model.load()
        assert not model.loaded and not hasattr(model, "model")
