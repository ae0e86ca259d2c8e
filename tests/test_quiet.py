"""Nothing but answers reaches the user: no library warning or notice while loading or generating.

Each check runs in a new Python process, because libraries warn once per process (transformers'
``warning_once``, Python's warning registry): an earlier test would have used up the warning.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from generic_checkpoints import build

FAMILIES_SCRIPT = """
from vlm_notebook import shapes
from vlm_notebook.models import Moondream, Qwen2VL, SmolVLM

picture = shapes.draw(shapes.Scene("circle", "red", "white")).image
for model in (SmolVLM("shapes-smolvlm"), Qwen2VL("shapes-qwen2vl"), Moondream("shapes-moondream")):
    print("".join(model.caption(picture, stream=True)))
    print(model.query(picture, "What colour is the shape?"))
    print(model.query(picture, "What shape is it?"))  # a follow-up: reuses the picture's work
"""

MAGIC_SCRIPT = """
from IPython.testing.globalipapp import start_ipython
from vlm_notebook import shapes

shell = start_ipython()
shell.user_ns["img"] = shapes.draw(shapes.Scene("circle", "red", "white")).image
shell.run_line_magic("load_ext", "vlm_notebook")
shell.run_line_magic("config", 'VLMMagics.default_model = "shapes-qwen2vl"')
shell.run_line_magic("vlm_caption", "img")
shell.run_line_magic("vlm_query", 'img "What colour is the shape?"')
"""


def run_quietly(script: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": ""}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True, text=True, timeout=240, env=environment, check=False,
    )


@pytest.mark.timeout(300)
@pytest.mark.parametrize("script", [FAMILIES_SCRIPT, MAGIC_SCRIPT], ids=["three families", "magics"])
def test_loading_and_generating_print_nothing_but_the_answers(script: str) -> None:
    result = run_quietly(script)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", f"the user would see this besides the answers:\n{result.stderr}"
    assert "red" in result.stdout.lower() or "赤" in result.stdout


GENERIC_SCRIPT = """
from vlm_notebook import get_model, shapes

picture = shapes.draw(shapes.Scene("circle", "red", "white")).image
model = get_model({directory!r})
print(repr("".join(model.caption(picture, stream=True, max_new_tokens=6))))
print(repr(model.query(picture, "What shape is it?", max_new_tokens=6)))
"""


@pytest.mark.timeout(300)
def test_a_model_with_linear_attention_streams_without_kernel_notices(tmp_path: Path) -> None:
    """Qwen3.5's convolution and linear-attention layers run in plain PyTorch without CUDA kernel
    packages; transformers' notice about it stays out of the answer (a tiny random Qwen3.5)."""
    directory = build("qwen3_5", tmp_path / "qwen3_5")
    result = run_quietly(GENERIC_SCRIPT.format(directory=str(directory)))
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", f"the user would see this besides the answers:\n{result.stderr}"
    assert result.stdout.count("\n") == 2


@pytest.mark.timeout(300)
def test_the_demo_prints_no_warning() -> None:
    result = run_quietly("from vlm_notebook.cli import main; main(['demo'])")
    assert result.returncode == 0, result.stderr
    assert "warning" not in (result.stdout + result.stderr).lower()
    assert "A red circle on a white background." in result.stdout
