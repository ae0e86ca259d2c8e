"""Names resolve through one registry: short names, Hub ids, directories; mistakes say what to do."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from vlm_notebook import CheckpointError, CheckpointNotAvailableError, UnknownModelError, get_model, hub, known_models
from vlm_notebook.cli import main
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


#: The names of the models issue #19 lists (and the families' defaults): each loads a fixed revision.
PINNED_NAMES = ["smolvlm-256m", "qwen2.5-vl-3b", "qwen3.5-0.8b", "qwen3.5-2b", "qwen3-vl-2b", "qwen3-vl-4b",
                "gemma-4-e2b", "gemma-4-e4b", "lfm2.5-vl-450m", "lfm2.5-vl-1.6b", "moondream2"]


@pytest.mark.parametrize("name", PINNED_NAMES)
def test_a_named_hub_model_loads_its_pinned_revision_unless_told_otherwise(name: str) -> None:
    entry = resolve(name)
    assert entry.revision is not None
    assert re.fullmatch(r"[0-9a-f]{40}", entry.revision) or entry.revision == "2025-06-21"  # Moondream's release tag
    assert get_model(name).revision == entry.revision
    assert get_model(entry.source).revision == entry.revision  # by Hub id too
    assert type(get_model(name))(name, revision="main").revision == "main"


def test_a_model_not_in_the_cache_says_how_to_fetch_its_pinned_revision() -> None:
    model = get_model("qwen3.5-0.8b")
    fetch = rf"hf download Qwen/Qwen3\.5-0\.8B --revision {model.revision}"
    with pytest.raises(CheckpointNotAvailableError, match=fetch):
        model.load()


def test_the_models_listing_shows_each_pinned_revision(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models"]) == 0
    listing = capsys.readouterr().out
    assert "google/gemma-4-E2B-it @ 3e22461f65e89153144f8adb70e3b8c2cc9845a7" in listing
    assert "vikhyatk/moondream2 @ 2025-06-21" in listing
    assert "smolvlm-500m" in listing and "HuggingFaceTB/SmolVLM-500M-Instruct @" not in listing  # not pinned
