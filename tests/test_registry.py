"""Names resolve through one registry: short names, Hub ids, directories; mistakes say what to do."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlm_notebook import CheckpointError, UnknownModelError, get_model, hub, known_models
from vlm_notebook.models import SmolVLM
from vlm_notebook.registry import resolve


def test_short_names_and_hub_ids_resolve_to_the_same_entry() -> None:
    assert resolve("smolvlm-256m").source == "HuggingFaceTB/SmolVLM-256M-Instruct"
    assert resolve("HuggingFaceTB/SmolVLM-256M-Instruct").name == "smolvlm-256m"


def test_every_supported_smolvlm_is_known() -> None:
    sources = {entry.source for entry in known_models("smolvlm")}
    for hub_id in [
        "HuggingFaceTB/SmolVLM-256M-Instruct",
        "HuggingFaceTB/SmolVLM-500M-Instruct",
        "HuggingFaceTB/SmolVLM-Instruct",
        "HuggingFaceTB/SmolVLM2-256M-Video-Instruct",
        "HuggingFaceTB/SmolVLM2-500M-Video-Instruct",
        "HuggingFaceTB/SmolVLM2-2.2B-Instruct",
    ]:
        assert hub_id in sources


def test_the_shipped_checkpoint_is_a_directory_in_the_package() -> None:
    entry = resolve("shapes-smolvlm")
    assert entry.shipped and (Path(entry.source) / "config.json").is_file()


def test_an_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(UnknownModelError, match="smolvlm-256m") as caught:
        get_model("smolvlm-265m")
    assert "shapes-smolvlm" in str(caught.value)


def test_a_family_class_takes_any_hub_id_of_its_family() -> None:
    model = SmolVLM("someone/my-finetuned-smolvlm")
    assert model.entry.source == "someone/my-finetuned-smolvlm" and not model.loaded


def test_get_model_builds_the_right_family_without_loading() -> None:
    model = get_model("shapes-smolvlm")
    assert isinstance(model, SmolVLM) and not model.loaded


def test_a_directory_of_another_family_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava"}))
    with pytest.raises(CheckpointError, match="llava"):
        SmolVLM(str(tmp_path))


def test_a_directory_without_config_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"config\.json"):
        SmolVLM(str(tmp_path))


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("name", "message"),
    [(None, r"A model name is text \(a short name, a Hub id or a checkpoint directory\), got None"),
     (123, "got 123"), (b"shapes-smolvlm", "got b'shapes-smolvlm'"), ("", "The model name is empty"),
     (" \t", "The model name is empty")],
    ids=["none", "number", "bytes", "empty", "blank"],
)
def test_a_name_that_is_not_text_or_is_empty_is_refused_with_the_known_names(name: object, message: str) -> None:
    for find in (get_model, resolve):
        with pytest.raises(UnknownModelError, match=message) as caught:
            find(name)  # type: ignore[arg-type]
        assert "Known names: smolvlm-256m" in str(caught.value)


@pytest.mark.timeout(30)
def test_an_empty_name_is_never_read_as_the_current_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "idefics3"}))
    monkeypatch.chdir(tmp_path)  # a checkpoint directory, were "" read as a path
    with pytest.raises(UnknownModelError, match="empty"):
        get_model("")


@pytest.mark.timeout(30)
def test_a_checkpoint_directory_may_be_given_as_a_path_object() -> None:
    shipped = Path(resolve("shapes-smolvlm").source)
    assert resolve(shipped).name == "shapes-smolvlm"
    assert isinstance(get_model(shipped), SmolVLM)


@pytest.mark.timeout(30)
def test_a_name_too_long_for_the_file_system_is_an_unknown_model_not_an_os_error() -> None:
    with pytest.raises(UnknownModelError, match="Unknown model 'nnn"):
        get_model("n" * 300)
    assert not hub.is_available_offline("n" * 300)
    with pytest.raises(CheckpointError, match="is not a Hub repository id"):
        hub.checkpoint_directory("n" * 300 + "/model")


@pytest.mark.timeout(30)
def test_loading_a_name_that_cannot_be_a_hub_id_says_so() -> None:
    model = SmolVLM("someone/not a repo")
    with pytest.raises(CheckpointError, match="'someone/not a repo' is not a Hub repository id"):
        model.load()
    assert not model.loaded
