"""The front ends import cheaply: neither torch nor transformers until a model is loaded."""

from __future__ import annotations

import subprocess
import sys

import pytest

FRONT_ENDS = ["vlm_notebook", "vlm_notebook.widgets", "vlm_notebook.magics", "vlm_notebook.models",
              "vlm_notebook.batch", "vlm_notebook.cli", "vlm_notebook.languages"]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("module", FRONT_ENDS)
def test_importing_a_front_end_loads_neither_torch_nor_transformers(module: str) -> None:
    script = f"import sys, {module}; print(sorted({{'torch', 'transformers'}} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=100, check=True)
    assert result.stdout.strip() == "[]", f"importing {module} loaded {result.stdout.strip()}"


@pytest.mark.timeout(120)
def test_a_family_is_imported_when_it_is_first_asked_for() -> None:
    script = "import sys, vlm_notebook.models as m; m.SmolVLM; print('transformers' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=100, check=True)
    assert result.stdout.strip() == "True"
