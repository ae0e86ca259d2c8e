"""Run the tutorial notebooks and save their outputs, as nbval will compare them.

    python notebooks/execute.py [NOTEBOOK ...]     (default: every notebook here; or `make notebooks`)

Widget state (``metadata.widgets``, which can hold image bytes) and execution timestamps are
dropped before saving, so a re-run changes only what the notebook shows.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent


def execute(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(HERE)}})
    client.execute()
    notebook.metadata.pop("widgets", None)
    for cell in notebook.cells:
        cell.metadata.pop("execution", None)
    nbformat.write(notebook, path)


def main(argv: list[str]) -> None:
    paths = [Path(arg) for arg in argv] or sorted(HERE.glob("*.ipynb"))
    for path in paths:
        execute(path)
        print(f"executed {path}")


if __name__ == "__main__":
    main(sys.argv[1:])
