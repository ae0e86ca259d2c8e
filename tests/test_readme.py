"""The README's layout section names every module, so a reader can map the tree at a glance."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "vlm_notebook"


def layout_section() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("## Layout")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def modules_a_reader_looks_for() -> list[str]:
    """Top-level modules and the model families' modules by file name, subpackages by folder."""
    names = [path.name for path in PACKAGE.glob("*.py") if not path.name.startswith("__")]
    names += [path.name for path in (PACKAGE / "models").glob("*.py") if not path.name.startswith("__")]
    names += [f"{path.name}/" for path in PACKAGE.iterdir() if (path / "__init__.py").is_file()]
    names += [f"{path.name}/" for path in (PACKAGE / "models").iterdir() if (path / "__init__.py").is_file()]
    return sorted(set(names))


def test_the_layout_section_names_every_module() -> None:
    section = layout_section()
    missing = [name for name in modules_a_reader_looks_for() if f"`{name}" not in section and f"{name}`" not in section]
    assert not missing, f"README.md's Layout section does not name: {', '.join(missing)}"


def test_the_layout_section_names_no_module_that_is_gone() -> None:
    section = layout_section()
    named = {part.strip("`") for part in section.split() if part.startswith("`") and part.rstrip("`,").endswith(".py")}
    gone = sorted(name for name in named if not list(ROOT.glob(f"[!.]*/**/{Path(name.rstrip(',`')).name}")))
    assert not gone, f"README.md's Layout section names modules that do not exist: {', '.join(gone)}"
