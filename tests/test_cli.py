"""The command line streams answers to stdout and figures to stderr; mistakes give a message, not a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from vlm_notebook.cli import DEMO_PICTURE, main


def test_caption_streams_the_caption(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["caption", str(DEMO_PICTURE), "--model", "shapes-smolvlm"]) == 0
    out, err = capsys.readouterr()
    assert out == "A red circle on a white background.\n"
    assert "TTFT" in err and "tokens/s" in err


def test_caption_without_streaming_and_with_a_prompt(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["caption", str(DEMO_PICTURE), "--model", "shapes-smolvlm", "--prompt", "Describe this", "--no-stream"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert out == "A red circle on a white background.\n"
    assert "whole answer after" in err


def test_query_takes_the_question_as_words(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["query", str(DEMO_PICTURE), "What", "shape", "is", "it?", "--model", "shapes-smolvlm"]) == 0
    assert capsys.readouterr().out == "A circle.\n"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["caption", str(DEMO_PICTURE), "--model", "no-such-model"], "Unknown model 'no-such-model'"),
        (["caption", "/no/such.png", "--model", "shapes-smolvlm"], "No image file"),
        (["query", str(DEMO_PICTURE), " ", "--model", "shapes-smolvlm"], "question is empty"),
    ],
)
def test_mistakes_print_one_clear_line(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.timeout(120)
def test_the_demo_runs_as_a_module() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "vlm_notebook", "demo"], capture_output=True, text=True, timeout=110, check=True
    )
    assert "streaming:     A red circle on a white background." in result.stdout
    assert "not streaming: A red circle on a white background." in result.stdout
    assert "赤 🔴" in result.stdout
