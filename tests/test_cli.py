"""The command line streams answers to stdout and figures to stderr; mistakes give a message, not a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("argv", "answer"),
    [
        (["--model", "shapes-qwen2vl", "--language", "ja"], "白い背景に赤い円。"),
        (["--model", "shapes-moondream", "--length", "short"], "A red circle."),
        (["--model", "shapes-gemma4", "--prompt", "What shape is it?"], "A circle."),
    ],
    ids=["qwen2vl-language", "moondream-length", "generic-prompt"],
)
def test_caption_takes_every_familys_own_options(
    argv: list[str], answer: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["caption", str(DEMO_PICTURE), *argv, "--device", "cpu"]) == 0
    out, err = capsys.readouterr()
    assert out == answer + "\n"
    assert "on cpu in" in err


def test_an_option_the_family_lacks_is_refused_naming_the_family(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["caption", str(DEMO_PICTURE), "--model", "shapes-smolvlm", "--length", "short"]) == 1
    assert "SmolVLM has no caption option length" in capsys.readouterr().err


def test_a_missing_picture_is_reported_before_the_model_loads(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["caption", "/no/such.png", "--model", "smolvlm-2.2b"]) == 1  # a model that is not even here
    err = capsys.readouterr().err
    assert "No image file" in err and "loading" not in err


def test_a_gpu_that_is_not_here_is_one_clear_line(capsys: pytest.CaptureFixture[str]) -> None:
    if __import__("torch").cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    assert main(["caption", str(DEMO_PICTURE), "--model", "shapes-smolvlm", "--device", "cuda"]) == 1
    err = capsys.readouterr().err
    assert "no CUDA GPU" in err and "Traceback" not in err


@pytest.mark.timeout(120)
def test_help_answers_without_importing_torch_and_shows_the_defaults() -> None:
    script = "import sys; from vlm_notebook.cli import main\ntry: main(['caption', '--help'])\n"
    script += "except SystemExit: pass\nprint('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=110, check=True)
    assert result.stdout.rstrip().endswith("False")
    words = " ".join(result.stdout.split())
    assert "default smolvlm-256m" in words and "default normal" in words and "default auto" in words


@pytest.mark.timeout(120)
def test_output_piped_into_a_reader_that_stops_early_ends_quietly() -> None:
    command = f"{sys.executable} -m vlm_notebook caption {DEMO_PICTURE} --model shapes-smolvlm | head -c 1"
    result = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=110, check=False)
    assert result.stdout == "A"
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr


def test_batch_into_a_folder_is_refused_before_the_model_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["batch", str(DEMO_PICTURE), "--out", str(tmp_path), "--model", "smolvlm-2.2b"]) == 1
    err = capsys.readouterr().err
    assert "is a folder" in err and "loading" not in err and "Traceback" not in err
