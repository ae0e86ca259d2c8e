"""Where checkpoints come from: a local directory, or a snapshot of a Hub repository."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import snapshot_download
from huggingface_hub.errors import (
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
)

from .errors import CheckpointError, CheckpointNotAvailableError
from .registry import is_directory

#: The files a checkpoint needs; nothing else is downloaded (and no Python code ever is).
CHECKPOINT_FILES = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model"]


def checkpoint_directory(source: str, revision: str | None = None, *, shipped: bool = False) -> Path:
    """The local directory holding ``source``: the directory itself, or the Hub snapshot of that id."""
    path = Path(source).expanduser()
    if shipped or is_directory(source):
        if not is_directory(source):
            raise CheckpointError(f"The checkpoint directory {source!r} does not exist.")
        return path
    return _hub_snapshot(source, revision)


def is_available_offline(source: str, revision: str | None = None) -> bool:
    """True when ``source`` is a directory or its Hub snapshot is already in the local cache."""
    if is_directory(source):
        return True
    try:
        snapshot_download(source, revision=revision, local_files_only=True, allow_patterns=CHECKPOINT_FILES)
    except (LocalEntryNotFoundError, OSError, ValueError):
        return False
    return True


def _hub_snapshot(repo_id: str, revision: str | None) -> Path:
    try:
        cached = snapshot_download(repo_id, revision=revision, local_files_only=True, allow_patterns=CHECKPOINT_FILES)
        return Path(cached)
    except LocalEntryNotFoundError:
        pass
    except HFValidationError as error:
        raise CheckpointError(f"{repo_id!r} is not a Hub repository id ({error}).") from None
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=CHECKPOINT_FILES))
    except RepositoryNotFoundError:
        raise CheckpointError(
            f"There is no Hub repository {repo_id!r} (or it is private or gated: log in with `hf auth login`)."
        ) from None
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as error:
        raise CheckpointNotAvailableError(_not_available(repo_id, revision, error)) from None


def _not_available(repo_id: str, revision: str | None, error: Exception) -> str:
    at = f" --revision {revision}" if revision else ""
    return (
        f"The checkpoint {repo_id!r} is not in the local Hugging Face cache and could not be downloaded "
        f"({type(error).__name__}). While online, fetch it with `hf download {repo_id}{at}` "
        "(or load the model once online); or pass a local checkpoint directory instead. "
        "Offline, 'shapes-smolvlm' ships with the package."
    )
