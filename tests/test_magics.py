"""The magics in a real IPython shell, on the shipped checkpoint."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from IPython.core.displayhook import DisplayHook
from IPython.core.interactiveshell import InteractiveShell

from vlm_notebook import ImageError, RequestError, shapes
from vlm_notebook.magics import Answer, VLMMagics
from vlm_notebook.models import SmolVLM

CAPTION = "A red circle on a white background."


class KernelLikeDisplayHook(DisplayHook):
    """Like ipykernel's: the "Out[n]:" prompt travels in the message, not on stdout."""

    def write_output_prompt(self) -> None:
        pass


@pytest.fixture(scope="module")
def shell() -> Iterator[InteractiveShell]:
    ip = InteractiveShell.instance()
    ip.displayhook = KernelLikeDisplayHook(shell=ip, cache_size=ip.cache_size)
    ip.display_trap.hook = ip.displayhook
    ip.run_line_magic("load_ext", "vlm_notebook")
    ip.run_line_magic("config", 'VLMMagics.default_model = "shapes-smolvlm"')
    ip.user_ns["img"] = shapes.draw(shapes.Scene("circle", "red", "white")).image
    yield ip
    InteractiveShell.clear_instance()


def magics(shell: InteractiveShell) -> VLMMagics:
    found = next(c for c in shell.configurables if isinstance(c, VLMMagics))
    assert isinstance(found, VLMMagics)
    return found


def run(shell: InteractiveShell, cell: str, capsys: pytest.CaptureFixture[str]) -> tuple[object, str]:
    capsys.readouterr()
    result = shell.run_cell(cell, store_history=True)  # as a kernel does: each cell gets its own count
    out = capsys.readouterr().out
    if result.error_in_exec is not None:
        return result.error_in_exec, out
    return result.result, out


@pytest.mark.timeout(60)
def test_caption_output_equals_the_model_caption(shell: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    expected = SmolVLM("shapes-smolvlm").caption(shell.user_ns["img"])
    answer, out = run(shell, "%vlm_caption img", capsys)
    assert out == expected + "\n", "streamed once, not shown again as the cell's result"
    assert isinstance(answer, Answer) and answer == expected


@pytest.mark.timeout(60)
def test_query_from_a_variable_a_path_and_a_cell(
    shell: InteractiveShell, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "green square.png"
    shapes.draw(shapes.Scene("square", "green", "black")).image.save(path)
    assert run(shell, '%vlm_query img "What shape is it?"', capsys)[1] == "A circle.\n"
    assert run(shell, f'%vlm_query "{path}" "What colour is the shape?"', capsys)[1] == "Green.\n"
    assert run(shell, "%%vlm_query img\nWhat colour is the background?\n", capsys)[1] == "White.\n"
    assert run(shell, "%vlm_query img --model shapes-smolvlm What shape is it ?", capsys)[0] == "A circle."


@pytest.mark.timeout(60)
def test_the_answer_is_available_to_the_next_cell(shell: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    run(shell, "%vlm_caption img", capsys)
    value, out = run(shell, "_", capsys)
    assert value == CAPTION and out == CAPTION + "\n", "shown as text when displayed in a later cell"
    value, _ = run(shell, "text = %vlm_caption img --prompt 'Describe this'\ntext.upper()", capsys)
    assert value == CAPTION.upper()


@pytest.mark.timeout(60)
def test_stats_and_no_stream(shell: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    answer, out = run(shell, "%vlm_caption img --stats", capsys)
    first, stats = out.splitlines()
    assert first == CAPTION and stats.startswith("TTFT ") and "tokens/s" in stats
    assert isinstance(answer, Answer) and answer.stats is not None and answer.stats.image_tokens == 5 * 16
    assert run(shell, "%vlm_caption img --no-stream", capsys)[1] == CAPTION + "\n"


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("cell", "error", "message"),
    [
        ("%vlm_caption img --length short", RequestError, "SmolVLM has no caption option length"),
        ("%vlm_caption img --no-such-option", RequestError, "unrecognized arguments"),
        ("%vlm_caption no_such_variable", ImageError, "No variable or file named 'no_such_variable'"),
        ("junk = b'not a picture'\n%vlm_caption junk", ImageError, "not an image"),
        ("%vlm_query img", RequestError, "question is empty"),
        ("%vlm_caption img --model no-such-model", KeyError, "Unknown model"),
        ("%vlm_caption img --max-new-tokens 0", RequestError, "max_new_tokens must be at least 1, got 0."),
        ('%vlm_query img "What shape?" --max-new-tokens 0', RequestError, "max_new_tokens must be at least 1"),
        ("%vlm_caption https://example.com/cat.jpg", ImageError, "is a URL, and vlm-notebook does not download"),
        (f"%vlm_caption {'x' * 300}.png", ImageError, "longer than the file system allows"),
        (f"%vlm_caption img --model {'m' * 300}", KeyError, "Unknown model 'mmm"),
    ],
    ids=["other-family-option", "unknown-flag", "missing-variable", "unreadable-image", "no-question", "bad-model",
         "zero-tokens-caption", "zero-tokens-query", "url", "name-too-long", "model-name-too-long"],
)
def test_mistakes_are_clear_errors_and_the_next_magic_works(
    shell: InteractiveShell, capsys: pytest.CaptureFixture[str], cell: str, error: type, message: str
) -> None:
    failure, _ = run(shell, cell, capsys)
    assert isinstance(failure, error) and message in str(failure)
    assert run(shell, "%vlm_caption img", capsys)[1] == CAPTION + "\n"


@pytest.mark.timeout(60)
def test_the_model_is_loaded_once_per_kernel(shell: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    first = magics(shell).model()
    run(shell, "%vlm_caption img", capsys)
    run(shell, "%vlm_query img 'What shape is it?' --model shapes-smolvlm", capsys)
    assert magics(shell).model("shapes-smolvlm") is first
    assert len(magics(shell)._models) == 1
    _, out = run(shell, "%vlm_models", capsys)
    row = next(line for line in out.splitlines() if line.startswith("shapes-smolvlm"))
    assert row.split()[1:4] == ["smolvlm", "yes", "yes"], "family, loaded, offline"


def test_help_lists_the_options(shell: InteractiveShell) -> None:
    help_text = magics(shell).vlm_caption.__doc__ or ""
    assert help_text.startswith("::\n\n  %vlm_caption")
    for option in ("image", "--model", "--prompt", "--length", "--language", "--max-new-tokens", "--stats"):
        assert option in help_text


@pytest.mark.timeout(60)
def test_the_model_list_lines_up_in_columns(shell: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    _, out = run(shell, "%vlm_models", capsys)
    header, *rows = out.splitlines()
    starts = [header.index(title) for title in ("family", "loaded", "offline", "source")]
    assert any(" moondream " in row for row in rows), "the longest family name is among the rows"
    for row in rows:
        for start in starts:
            assert row[start - 1] == " " and row[start] != " ", f"a column starts at {start} in {row!r}"


@pytest.mark.timeout(120)
def test_the_magics_take_the_device_and_number_format(
    shell: InteractiveShell, capsys: pytest.CaptureFixture[str]
) -> None:
    answer, out = run(shell, "%vlm_caption img --device cpu --dtype bfloat16 --stats", capsys)
    assert answer == CAPTION and isinstance(answer, Answer) and answer.stats is not None
    assert (answer.stats.device, answer.stats.dtype) == ("cpu", "bfloat16") and "TTFT" in out
    error, _ = run(shell, "%vlm_caption img --dtype int4", capsys)
    assert isinstance(error, RequestError) and "invalid choice" in str(error)


@pytest.mark.timeout(120)
def test_vlm_chat_carries_the_conversation_across_cells(
    shell: InteractiveShell, capsys: pytest.CaptureFixture[str]
) -> None:
    first, out = run(shell, "%%vlm_chat img\nWhat colour is the shape?", capsys)
    second, _ = run(shell, "%%vlm_chat\nWhat shape is it?", capsys)
    chat = SmolVLM("shapes-smolvlm").chat(shell.user_ns["img"])
    assert (first, second) == (chat.ask("What colour is the shape?"), chat.ask("What shape is it?"))
    assert out == f"{first}\n"
    assert isinstance(second, Answer) and second.stats is not None
    assert second.stats.extra.get("conversation_cache") == "hit"
    again, _ = run(shell, "%%vlm_chat --new\nWhat colour is the shape?", capsys)
    assert again == first  # a new conversation on the same picture


@pytest.mark.timeout(60)
def test_vlm_chat_without_a_conversation_says_how_to_start_one(capsys: pytest.CaptureFixture[str]) -> None:
    shell = InteractiveShell.instance()
    fresh = VLMMagics(shell)
    with pytest.raises(RequestError, match="start one with %%vlm_chat IMAGE"):
        fresh.vlm_chat("", "What shape is it?")
