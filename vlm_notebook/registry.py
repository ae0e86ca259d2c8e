"""One registry of model names for every family: short names, Hub ids and local directories.

The registry knows families by name only and imports a family's module (and so transformers)
when a model is actually asked for, so ``import vlm_notebook`` stays cheap.
"""

from __future__ import annotations

import importlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import CheckpointError, RequestError, UnknownModelError

if TYPE_CHECKING:
    from .models.base import VLM

CHECKPOINTS_DIR = Path(__file__).parent / "checkpoints"

#: family name -> "module:class"
FAMILIES: dict[str, str] = {
    "smolvlm": "vlm_notebook.models.smolvlm:SmolVLM",
    "qwen2vl": "vlm_notebook.models.qwen2vl:Qwen2VL",
    "moondream": "vlm_notebook.models.moondream:Moondream",
    "remote": "vlm_notebook.models.remote:RemoteVLM",
    "transformers": "vlm_notebook.models.generic:TransformersModel",  # any other image-text-to-text type
}

#: ``model_type`` in a checkpoint's config.json -> family name
MODEL_TYPES: dict[str, str] = {
    "idefics3": "smolvlm",
    "smolvlm": "smolvlm",
    "qwen2_vl": "qwen2vl",
    "qwen2_5_vl": "qwen2vl",
    "moondream1": "moondream",
}


@dataclass(frozen=True)
class ModelEntry:
    """A model users can ask for by ``name``: a Hub id, or a directory shipped in the package."""

    name: str
    family: str
    source: str  # Hub id ("org/name") or an absolute directory
    description: str = ""
    #: The Hub revision the name loads unless the caller passes ``revision=`` (None: the default branch).
    revision: str | None = None

    @property
    def shipped(self) -> bool:
        return Path(self.source).is_absolute()

    @property
    def origin(self) -> str:
        """Where the weights come from, for listings: the Hub id and its pinned revision, or "shipped"."""
        if self.shipped:
            return "shipped with vlm-notebook"
        return f"{self.source} @ {self.revision}" if self.revision else self.source


_ENTRIES: dict[str, ModelEntry] = {}


def register(entry: ModelEntry) -> None:
    """Add a short name; later families register theirs the same way."""
    if entry.family not in FAMILIES:
        raise ValueError(f"unknown family {entry.family!r}")
    _ENTRIES[entry.name] = entry


#: (name, family, Hub id, description) of the published checkpoints known by short name
_HUB_MODELS = [
    ("smolvlm-256m", "smolvlm", "HuggingFaceTB/SmolVLM-256M-Instruct", "SmolVLM 256M"),
    ("smolvlm-500m", "smolvlm", "HuggingFaceTB/SmolVLM-500M-Instruct", "SmolVLM 500M"),
    ("smolvlm-2.2b", "smolvlm", "HuggingFaceTB/SmolVLM-Instruct", "SmolVLM 2.2B"),
    ("smolvlm2-256m", "smolvlm", "HuggingFaceTB/SmolVLM2-256M-Video-Instruct", "SmolVLM2 256M"),
    ("smolvlm2-500m", "smolvlm", "HuggingFaceTB/SmolVLM2-500M-Video-Instruct", "SmolVLM2 500M"),
    ("smolvlm2-2.2b", "smolvlm", "HuggingFaceTB/SmolVLM2-2.2B-Instruct", "SmolVLM2 2.2B"),
    ("qwen2-vl-2b", "qwen2vl", "Qwen/Qwen2-VL-2B-Instruct", "Qwen2-VL 2B"),
    ("qwen2-vl-7b", "qwen2vl", "Qwen/Qwen2-VL-7B-Instruct", "Qwen2-VL 7B"),
    ("qwen2.5-vl-3b", "qwen2vl", "Qwen/Qwen2.5-VL-3B-Instruct", "Qwen2.5-VL 3B"),
    ("qwen2.5-vl-7b", "qwen2vl", "Qwen/Qwen2.5-VL-7B-Instruct", "Qwen2.5-VL 7B"),
    ("moondream2", "moondream", "vikhyatk/moondream2", "Moondream 2 (release 2025-06-21), native"),
    # the generic family: model types transformers knows, no per-family code
    ("qwen3.5-0.8b", "transformers", "Qwen/Qwen3.5-0.8B", "Qwen3.5 0.8B (qwen3_5)"),
    ("qwen3.5-2b", "transformers", "Qwen/Qwen3.5-2B", "Qwen3.5 2B (qwen3_5)"),
    ("qwen3-vl-2b", "transformers", "Qwen/Qwen3-VL-2B-Instruct", "Qwen3-VL 2B (qwen3_vl)"),
    ("qwen3-vl-4b", "transformers", "Qwen/Qwen3-VL-4B-Instruct", "Qwen3-VL 4B (qwen3_vl)"),
    ("gemma-4-e2b", "transformers", "google/gemma-4-E2B-it", "Gemma 4 E2B (gemma4)"),
    ("gemma-4-e4b", "transformers", "google/gemma-4-E4B-it", "Gemma 4 E4B (gemma4)"),
    ("lfm2.5-vl-450m", "transformers", "LiquidAI/LFM2.5-VL-450M", "LFM2.5-VL 450M (lfm2_vl; needs torchvision)"),
    ("lfm2.5-vl-1.6b", "transformers", "LiquidAI/LFM2.5-VL-1.6B", "LFM2.5-VL 1.6B (lfm2_vl; needs torchvision)"),
    # FastVLM-0.5B has no name: Apple's repository runs its own code, and the transformers-format
    # copies are community uploads not checked here; a local copy loads with get_model(directory).
]

#: Hub id -> the revision its short name loads, so that a name gives the same weights every day.
#: Moondream's is the release our native code follows. The commit ids were read from public
#: project files that pin them (the Hub itself was out of reach when they were written down):
#: ``revision="main"`` loads the newest.
PINNED_REVISIONS: dict[str, str] = {
    "vikhyatk/moondream2": "2025-06-21",
    "HuggingFaceTB/SmolVLM-256M-Instruct": "7e3e67edbbed1bf9888184d9df282b700a323964",
    "Qwen/Qwen2.5-VL-3B-Instruct": "66285546d2b821cf421d4f5eb2576359d3770cd3",
    "Qwen/Qwen3.5-0.8B": "2fc06364715b967f1860aea9cf38778875588b17",
    "Qwen/Qwen3.5-2B": "15852e8c16360a2fea060d615a32b45270f8a8fc",
    "Qwen/Qwen3-VL-2B-Instruct": "89644892e4d85e24eaac8bacfd4f463576704203",
    "Qwen/Qwen3-VL-4B-Instruct": "ebb281ec70b05090aa6165b016eac8ec08e71b17",
    "google/gemma-4-E2B-it": "3e22461f65e89153144f8adb70e3b8c2cc9845a7",
    "google/gemma-4-E4B-it": "ee0ef6023621cff504d758262d4e04895a5af4a2",
    "LiquidAI/LFM2.5-VL-450M": "fc6221ca597f3315e4f82fc2df606783267b34ba",
    "LiquidAI/LFM2.5-VL-1.6B": "919fde3d022e3f90a4716006f993938ee8c2eb97",
}

#: (name, family, description) of the checkpoints shipped in ``CHECKPOINTS_DIR/name``
_SHIPPED_MODELS = [
    ("shapes-smolvlm", "smolvlm", "tiny SmolVLM trained on shapes, offline"),
    ("shapes-qwen2vl", "qwen2vl", "tiny Qwen2-VL trained on shapes, English and Japanese"),
    ("shapes-moondream", "moondream", "tiny Moondream 2 trained on shapes: captions, answers, detect, point"),
    ("shapes-gemma4", "transformers", "tiny Gemma 4 trained on shapes, through the generic transformers family"),
]


def _register_defaults() -> None:
    for name, family, hub_id, description in _HUB_MODELS:
        register(ModelEntry(name, family, hub_id, description, PINNED_REVISIONS.get(hub_id)))
    for name, family, description in _SHIPPED_MODELS:
        register(ModelEntry(name, family, str(CHECKPOINTS_DIR / name), description))


_register_defaults()


def known_models(family: str | None = None) -> list[ModelEntry]:
    return [entry for entry in _ENTRIES.values() if family in (None, entry.family)]


def resolve(name: str | os.PathLike[str], family: str | None = None) -> ModelEntry:
    """Find what ``name`` means: a short name, a known Hub id, a directory, or (given a family) any Hub id."""
    name = _checked_name(name, family)
    entry = _ENTRIES.get(name) or next((e for e in _ENTRIES.values() if e.source == name), None)
    if entry is None and name.startswith(REMOTE_PREFIX):
        parse_remote_name(name)  # refuses a malformed name with the expected form
        entry = ModelEntry(name, "remote", name, "a model on an OpenAI-compatible server")
    if entry is None and is_directory(name):
        directory = Path(name).expanduser().resolve()
        entry = ModelEntry(name, family_of_directory(directory), str(directory))
    if entry is None and family is not None and _looks_like_hub_id(name):
        entry = ModelEntry(name, family, name)
    if entry is None:
        raise UnknownModelError(_unknown_message(name, family))
    if family is not None and entry.family != family:
        raise CheckpointError(
            f"{name!r} is a {entry.family} model{_model_type_note(entry)}, not {family}: "
            f"load it with {FAMILIES[entry.family].rsplit(':', 1)[1]}({name!r})."
        )
    return entry


def get_model(name: str | os.PathLike[str], *, device: str = "auto", dtype: str = "auto") -> VLM:
    """Build (without loading) the model ``name`` refers to, whatever its family, to run on ``device``
    in ``dtype`` (see ``vlm_notebook.runtime``). A remote model runs where its server runs: for it
    both stay "auto"."""
    entry = resolve(name)
    module_name, class_name = FAMILIES[entry.family].split(":")
    family_class = getattr(importlib.import_module(module_name), class_name)
    if entry.family == "remote":
        if (device, dtype) != ("auto", "auto"):
            raise RequestError(
                f"{name!r} runs on its server, which chooses the device and number format: leave device "
                "and dtype as 'auto' (or start the server with the settings you want)."
            )
        return family_class(name)  # type: ignore[no-any-return]
    model: VLM = family_class(name, device=device, dtype=dtype)
    return model


#: ``remote:<model>@<base_url>`` names a model on an OpenAI-compatible server (``RemoteVLM``)
REMOTE_PREFIX = "remote:"


def parse_remote_name(name: str) -> tuple[str, str]:
    """``(model, base_url)`` of ``remote:<model>@<base_url>``: split where the URL starts, so the model
    and the URL (a password in it) may both contain "@"."""
    rest = name.removeprefix(REMOTE_PREFIX)
    starts = [at for at in (rest.find("@http://"), rest.find("@https://")) if at >= 0]
    model, base_url = (rest[: min(starts)], rest[min(starts) + 1 :]) if starts else (rest, "")
    if not name.startswith(REMOTE_PREFIX) or not model or not base_url.startswith(("http://", "https://")):
        raise UnknownModelError(
            f"{name!r} is not a remote model name: write remote:<model>@<base_url>, "
            "for example remote:Qwen/Qwen2-VL-2B-Instruct@http://localhost:8000/v1."
        )
    return model, base_url


def family_of_directory(directory: Path) -> str:
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise CheckpointError(
            f"{str(directory)!r} has no config.json: it is not a checkpoint directory "
            "(it needs config.json, the weights and the processor files)."
        )
    try:
        config = json.loads(config_file.read_text())
        model_type = config.get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as error:
        raise CheckpointError(f"{str(config_file)!r} is not valid JSON ({error}).") from None
    if model_type in MODEL_TYPES:
        return MODEL_TYPES[model_type]
    if isinstance(model_type, str) and is_image_text_to_text(model_type):
        return GENERIC_FAMILY
    if "auto_map" in config:
        raise CheckpointError(
            f"{str(directory)!r} holds a {model_type!r} model that needs its own code from the Hub (auto_map in "
            "config.json), which vlm-notebook never runs. Use a checkpoint of that model converted to a model "
            "type transformers knows, or serve it with its own code and use a remote:<model>@<url> name."
        )
    raise CheckpointError(
        f"{str(directory)!r} holds a {model_type!r} model, which vlm-notebook does not support; supported "
        f"model types: {', '.join(sorted(MODEL_TYPES))}, and any that transformers loads with "
        "AutoModelForImageTextToText."
    )


#: The family of checkpoints whose model type has no named family.
GENERIC_FAMILY = "transformers"


def _model_type_note(entry: ModelEntry) -> str:
    """" (model type 'llava')" for a checkpoint directory of the generic family, else ""."""
    if entry.family != GENERIC_FAMILY or not is_directory(entry.source):
        return ""
    model_type = json.loads((Path(entry.source) / "config.json").read_text()).get("model_type")
    return f" (model type {model_type!r})"


def is_image_text_to_text(model_type: str) -> bool:
    """Whether transformers maps ``model_type`` to ``AutoModelForImageTextToText`` (imports transformers)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    return model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES


def _checked_name(name: object, family: str | None) -> str:
    """``name`` as text; a name that is not text, or is empty, is refused before it can mean anything
    (an empty path is the current directory)."""
    if isinstance(name, os.PathLike):
        name = os.fspath(name)
    if not isinstance(name, str):
        raise UnknownModelError(
            f"A model name is text (a short name, a Hub id or a checkpoint directory), got {name!r}. "
            + _known(family)
        )
    if not name.strip():
        raise UnknownModelError(f"The model name is empty. {_known(family)}")
    return name


def is_directory(name: str) -> bool:
    """Whether ``name`` (``~`` expanded) is a directory; False for what no file system could hold
    (a component over 255 bytes, a NUL), which ``Path.is_dir`` would raise OSError for."""
    try:
        return Path(name).expanduser().is_dir()
    except (OSError, ValueError):
        return False


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "~"))


def _unknown_message(name: str, family: str | None) -> str:
    hint = "" if family else (
        " For another Hub checkpoint, pass its id to its family's class: SmolVLM('org/name'), or"
        " TransformersModel('org/name') (vlm_notebook.models.generic) for any other image-text-to-text model."
    )
    return f"Unknown model {name!r}. {_known(family)}{hint}"


def _known(family: str | None) -> str:
    names = ", ".join(entry.name for entry in known_models(family))
    return f"Known names: {names}; or give a checkpoint directory."
