"""requirements/test.lock, what make test and CI install, agrees with pyproject.toml's ranges.

If this fails after a change to pyproject.toml, renew the lock with ``make lock`` and run the tests.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent


def locked_versions() -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for line in (ROOT / "requirements" / "test.lock").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, separator, version = line.partition("==")
        assert separator and version.strip(), f"lock line {line!r} is not an exact pin (name==version)"
        pins[canonicalize_name(name)] = Version(version.strip())
    return pins


def project_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    return [Requirement(line) for line in lines]


def test_every_requirement_of_the_project_is_locked_within_its_range() -> None:
    pins = locked_versions()
    disagreements = []
    for requirement in project_requirements():
        pinned = pins.get(canonicalize_name(requirement.name))
        if pinned is None:
            disagreements.append(f"{requirement} is not in the lock")
        elif not requirement.specifier.contains(pinned, prereleases=True):
            disagreements.append(f"{requirement} but the lock has {pinned}")
    assert not disagreements, "pyproject.toml and the lock disagree (run make lock): " + "; ".join(disagreements)


def test_the_lock_pins_the_cpu_build_of_torch_and_the_build_tools() -> None:
    pins = locked_versions()
    assert pins["torch"].local == "cpu", "a torch without +cpu would make pip pull a CUDA build of several GB"
    assert {"pip", "setuptools"} <= set(pins), "the package is built without isolation, by the locked setuptools"
