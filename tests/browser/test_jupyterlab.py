"""The widget and the magics as a user meets them: JupyterLab in headless Chromium.

Each test runs a cell of one notebook through the page (click into the cell, Ctrl+Enter), works
the widget with the mouse (file input, Run, Stop) and reads what the page shows. A
MutationObserver in the page records every text the Output shows, so partial texts that last only
one update are seen however briefly they show.

Two models: the shipped ``shapes-smolvlm``, whose caption of the bundled picture is known, and a
same-shape random-weight SmolVLM-256M (``vlm_notebook.random_checkpoints``; built offline, on first
use), which decodes at the speed of the real model. The tiny model decodes its 9-token caption
in a few hundredths of a second on an idle machine: the widget, which updates the page at most
20 times a second, shows one or two partial texts before the caption, and no one can click Stop
in time. The
real-size model streams for seconds. Its text is meaningless, so its expected answer is the same
model's non-streamed answer, computed in the kernel on the picture the browser uploaded.

Screenshots of the widget mid-stream and finished go to pytest's temporary directory, or to
``VLM_SCREENSHOTS_DIR`` when it is set (``VLM_SCREENSHOTS_DIR=docs/screenshots`` renews the ones
the README shows).
"""

from __future__ import annotations

import ast
import base64
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import vlm_notebook

from .conftest import LabServer, failed

pytestmark = pytest.mark.browser

PICTURE = "red-circle-on-white.png"
CAPTION = "A red circle on a white background."  # shapes-smolvlm's caption of PICTURE
MAX_TOKENS = 120  # the real-size model's answer, typed into the widget: 120 tokens stream for seconds
SCREENSHOT_AFTER = 10  # texts shown before the mid-stream screenshot
WAIT_MS = 60_000  # the longest single wait on the page (a model load on a busy machine)
START_MS, PRESSES = 10_000, 3  # how long a cell may take to show it runs after Ctrl+Enter, and tries

SETUP, SHAPES_WIDGET, REAL_SIZE_WIDGET, REAL_SIZE_EXPECTED, MAGIC, CHAT = range(6)
#: Two turns about PICTURE and shapes-smolvlm's answers (the second knows the first).
CHAT_TURNS = [("What colour is the background?", "White."), ("What shape is it?", "A circle.")]
CELLS = {
    SETUP: """\
import torch
torch.set_num_threads(1)  # the machine is shared with other work
from vlm_notebook.models import SmolVLM
from vlm_notebook.widgets import SmolVLMWidget""",
    SHAPES_WIDGET: """\
shapes = SmolVLM("shapes-smolvlm")
shapes.load()
SmolVLMWidget(shapes)""",
    REAL_SIZE_WIDGET: """\
from vlm_notebook.random_checkpoints import random_checkpoint
real_size = SmolVLM(str(random_checkpoint("smolvlm-256m", image_splitting=False)))
real_size.load()
real_size_widget = SmolVLMWidget(real_size)
real_size_widget""",
    REAL_SIZE_EXPECTED: """\
tokens = real_size_widget.max_new_tokens.value
print(repr((tokens, real_size.caption(real_size_widget.image, max_new_tokens=tokens))))""",
    MAGIC: f"""\
%load_ext vlm_notebook
%config VLMMagics.default_model = "shapes-smolvlm"
%vlm_caption {PICTURE}""",
    CHAT: """\
from vlm_notebook.widgets import ChatWidget
ChatWidget(SmolVLM("shapes-smolvlm"))""",
}

# Records, per key, every distinct text that the element matching `selector` in cell `index` shows.
_WATCH = """([index, selector, key]) => {
  const cell = document.querySelectorAll('.jp-Notebook .jp-Cell')[index];
  const seen = (window.vlmSeen = window.vlmSeen || {});
  const texts = (seen[key] = []);
  const record = () => {
    const element = cell.querySelector(selector);
    const text = element ? element.textContent : '';
    if (texts.length === 0 || texts[texts.length - 1] !== text) texts.push(text);
  };
  new MutationObserver(record).observe(cell, {subtree: true, childList: true, characterData: true});
  record();
}"""
_KERNEL_IDLE = """() => {
  const panel = window.jupyterapp && window.jupyterapp.shell.currentWidget;
  const kernel = panel && panel.sessionContext && panel.sessionContext.session && panel.sessionContext.session.kernel;
  return Boolean(kernel && kernel.status === 'idle' && panel.content.widgets.length > 0);
}"""
# Notebook 7 has no window.jupyterapp: its toolbar's execution indicator says when the kernel is idle.
_KERNEL_IDLE_NOTEBOOK7 = """() => Boolean(
  document.querySelector('.jp-Notebook-ExecutionIndicator[data-status="idle"]')
  && document.querySelectorAll('.jp-Notebook .jp-Cell').length > 0
)"""
# Texts shown since the element was first empty (Run clears the Output; running a cell clears its output).
_SINCE_CLEARED = """key => {
  const texts = window.vlmSeen[key];
  const cleared = texts.indexOf('');
  return cleared < 0 ? [] : texts.slice(cleared + 1);
}"""
_SEEN_AT_LEAST = f"([key, n]) => ({_SINCE_CLEARED})(key).length >= n"


class NotebookPage:
    """The notebook open in JupyterLab: run cells, reach into their outputs, record texts."""

    def __init__(self, page: Any, failures: Path) -> None:
        self.page = page
        self._failures = failures

    def cell(self, index: int) -> Any:
        return self.page.locator(".jp-Notebook .jp-Cell").nth(index)

    def run_cell(self, index: int, timeout_ms: int = WAIT_MS) -> None:
        """Run cell ``index`` as a user does (click into it, Ctrl+Enter) and wait until it has run."""
        from playwright.sync_api import expect

        cell = self.cell(index)
        prompt = cell.locator(".jp-InputArea-prompt")
        before = prompt.inner_text()  # "[ ]:", or the count of the cell's last run
        for attempt in range(PRESSES):
            cell.locator(".jp-InputArea-editor").click()
            self.page.keyboard.press("Control+Enter")
            try:  # the page shows "[*]:" as soon as it takes the keys, before the kernel hears of it
                expect(prompt).not_to_have_text(before, timeout=START_MS)
                break
            except AssertionError as error:  # a press lost by a page busy with other work
                if attempt == PRESSES - 1:
                    self.fail(f"cell {index} did not start running after {PRESSES} presses of Ctrl+Enter: {error}")
        self.expect(prompt, f"cell {index} to finish running", timeout_ms).to_have_text(re.compile(r"\[\d+\]"))

    def watch(self, index: int, selector: str, key: str) -> None:
        """Start recording the texts shown by ``selector`` inside cell ``index``, under ``key``."""
        self.page.evaluate(_WATCH, [index, selector, key])

    def seen(self, key: str) -> list[str]:
        """The texts recorded under ``key`` since the element was cleared, in order (none if it never was)."""
        texts: list[str] = self.page.evaluate(_SINCE_CLEARED, key)
        return texts

    def wait_seen(self, key: str, count: int, timeout_ms: int = WAIT_MS) -> None:
        """Wait until ``count`` texts were recorded under ``key`` since the element was cleared."""
        try:
            self.page.wait_for_function(_SEEN_AT_LEAST, arg=[key, count], timeout=timeout_ms, polling=50)
        except Exception as error:
            everything = self.page.evaluate("key => window.vlmSeen[key]", key)
            self.fail(f"waiting for {count} texts under {key!r} after a clear, saw {everything!r}: {error}")

    def expect(self, locator: Any, what: str, timeout_ms: int = WAIT_MS) -> Any:
        """Playwright's ``expect`` with a bounded wait; a failure saves a screenshot of the page."""
        from playwright.sync_api import expect

        return _Expectation(expect(locator), what, timeout_ms, self)

    def fail(self, message: str) -> None:
        path = self._failures / f"failure-{len(list(self._failures.glob('*.png')))}.png"
        self.page.screenshot(path=str(path))
        pytest.fail(f"{message}\n(screenshot of the page: {path})")


class _Expectation:
    """Forwards ``to_*`` assertions with a timeout, turning a failure into ``NotebookPage.fail``."""

    def __init__(self, assertions: Any, what: str, timeout_ms: int, page: NotebookPage) -> None:
        self._assertions = assertions
        self._what = what
        self._timeout_ms = timeout_ms
        self._page = page

    def __getattr__(self, name: str) -> Any:
        check = getattr(self._assertions, name)

        def bounded(*args: Any, **kwargs: Any) -> None:
            try:
                check(*args, timeout=self._timeout_ms, **kwargs)
            except AssertionError as error:
                self._page.fail(f"waiting for {self._what}: {error}")

        return bounded


class WidgetView:
    """One SmolVLMWidget as the page shows it."""

    def __init__(self, notebook: NotebookPage, index: int) -> None:
        self.notebook = notebook
        self.index = index
        self.area = notebook.cell(index).locator(".jp-Cell-outputArea")
        # Not exact names: an icon's glyph (CSS generated content) is part of a button's name.
        self.run_button = self.area.get_by_role("button", name="Run")
        self.stop_button = self.area.get_by_role("button", name="Stop")

    def upload(self, picture: Path, label: str = "Image") -> None:
        """Click the upload button, choose ``picture``, and wait for the kernel's preview of it."""
        with self.notebook.page.expect_file_chooser(timeout=WAIT_MS) as chooser:
            self.area.get_by_role("button", name=re.compile(label + r" \(\d+\)")).click()
        chooser.value.set_files(str(picture))
        preview = self.area.locator("img").element_handle(timeout=WAIT_MS)
        try:  # the kernel decodes the upload and sends back a thumbnail: proof that it arrived
            self.notebook.page.wait_for_function("image => image.naturalWidth > 0", arg=preview, timeout=WAIT_MS)
        except Exception as error:
            self.notebook.fail(f"no preview of the uploaded {picture.name}: {error}")

    def set_max_tokens(self, tokens: int) -> None:
        field = self.area.locator(".widget-inline-hbox", has_text="Max tokens").locator("input")
        field.fill(str(tokens))
        field.press("Enter")

    def watch_output(self, key: str) -> None:
        self.notebook.watch(self.index, ".widget-output", key)

    def click_run(self) -> None:
        self.notebook.expect(self.run_button, "Run to be enabled").to_be_enabled()
        self.run_button.click()

    def wait_idle(self, timeout_ms: int = WAIT_MS) -> None:
        """Wait until the run ended: Run enabled, Stop disabled."""
        self.notebook.expect(self.stop_button, "Stop to be disabled", timeout_ms).to_be_disabled()
        self.notebook.expect(self.run_button, "Run to be enabled", timeout_ms).to_be_enabled()

    def wait_ended(self, reason: str) -> None:
        """Wait until the figures line says the run ended for ``reason`` ("stop", "cancelled").

        Unlike ``wait_idle``, this cannot pass before the run has even started (a fast model's
        whole run may fall between two looks at the buttons)."""
        line = self.area.locator(".widget-html", has_text="tokens/s")
        ended = re.compile(rf"ended .*\({reason}, ")
        self.notebook.expect(line, f"the figures to say the run ended ({reason})").to_contain_text(ended)

    def figures(self) -> str:
        """The widget's line of figures (time to first token, tokens, how the run ended)."""
        labels = self.area.locator(".widget-html").all_text_contents()
        return next((text for text in labels if "tokens/s" in text), "")

    def screenshot(self, path: Path) -> None:
        self.area.screenshot(path=str(path))


@pytest.fixture(scope="module")
def notebook(lab_server: LabServer, browser: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NotebookPage]:
    """The test notebook open in JupyterLab with its kernel started and idle."""
    yield from _opened(lab_server, browser, tmp_path_factory, "lab")


@pytest.fixture(scope="module")
def notebook7(lab_server: LabServer, browser: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NotebookPage]:
    """A copy of the test notebook open in Notebook 7 (the same server), its kernel started and idle."""
    yield from _opened(lab_server, browser, tmp_path_factory, "notebook")


def _opened(lab_server: LabServer, browser: Any, tmp: pytest.TempPathFactory, ui: str) -> Iterator[NotebookPage]:
    name = "browser.ipynb" if ui == "lab" else f"browser-{ui}.ipynb"  # one kernel each
    _write_notebook(lab_server.root / name)
    shutil.copy(Path(vlm_notebook.__file__).parent / "assets" / PICTURE, lab_server.root / PICTURE)
    page = browser.new_page()
    notebook = NotebookPage(page, tmp.mktemp("failures"))
    try:
        page.goto(lab_server.notebook_url(name, ui), timeout=WAIT_MS)
        try:
            idle = _KERNEL_IDLE if ui == "lab" else _KERNEL_IDLE_NOTEBOOK7
            page.wait_for_function(idle, timeout=WAIT_MS, polling=200)
        except Exception as error:
            notebook.fail(f"the notebook's kernel did not become idle in {ui}: {error}")
        notebook.run_cell(SETUP)
        yield notebook
    finally:
        page.close()


@pytest.fixture(autouse=True)
def screenshot_on_failure(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[None]:
    """A failed test leaves a screenshot of the whole page beside its temporary files."""
    yield
    if failed(request.node) and "notebook" in request.fixturenames:
        page = request.getfixturevalue("notebook").page
        page.screenshot(path=str(tmp_path / "page-at-failure.png"), full_page=True)
        (tmp_path / "page-at-failure.html").write_text(page.content())
        print(f"screenshot and HTML of the page at the failure: {tmp_path}/page-at-failure.*")


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    configured = os.environ.get("VLM_SCREENSHOTS_DIR")
    if not configured:
        return tmp_path_factory.mktemp("screenshots")
    directory = Path(configured)
    directory.mkdir(parents=True, exist_ok=True)
    return directory


@pytest.fixture(scope="module")
def real_size_widget(notebook: NotebookPage, lab_server: LabServer) -> WidgetView:
    """The real-size widget, shown, with the bundled picture uploaded and MAX_TOKENS set."""
    notebook.run_cell(REAL_SIZE_WIDGET, timeout_ms=120_000)  # the first run on a machine builds the model
    widget = WidgetView(notebook, REAL_SIZE_WIDGET)
    widget.upload(lab_server.root / PICTURE)
    widget.set_max_tokens(MAX_TOKENS)
    return widget


@pytest.fixture(scope="module")
def real_size_answer(notebook: NotebookPage, real_size_widget: WidgetView) -> str:
    """The real-size model's answer to the uploaded picture, without streaming, printed by a cell."""
    notebook.run_cell(REAL_SIZE_EXPECTED)
    printed = notebook.cell(REAL_SIZE_EXPECTED).locator(".jp-OutputArea-output").inner_text()
    tokens, answer = ast.literal_eval(printed.strip())
    assert tokens == MAX_TOKENS, f"the widget's Max tokens is {tokens}, not the {MAX_TOKENS} typed into the page"
    assert isinstance(answer, str) and answer, f"unexpected printed answer {printed!r}"
    return answer


@pytest.mark.timeout(180)
@pytest.mark.parametrize("ui", ["lab", "notebook7"])
def test_widget_captions_an_uploaded_picture(
    ui: str, request: pytest.FixtureRequest, lab_server: LabServer, screenshots: Path
) -> None:
    notebook: NotebookPage = request.getfixturevalue("notebook" if ui == "lab" else "notebook7")
    notebook.run_cell(SHAPES_WIDGET)
    widget = WidgetView(notebook, SHAPES_WIDGET)
    widget.upload(lab_server.root / PICTURE)
    widget.watch_output("shapes")

    widget.click_run()
    widget.wait_ended("stop")
    widget.wait_idle()

    notebook.expect(widget.area.locator(".widget-output"), "the caption", 10_000).to_have_text(CAPTION)
    shown = [text for text in notebook.seen("shapes") if text]
    print(f"shapes-smolvlm, texts the Output showed: {shown!r}; figures: {widget.figures()!r}")
    assert shown[-1] == CAPTION
    assert all(CAPTION.startswith(text) for text in shown), shown  # it only ever grows
    assert re.search(r"ended .*\(stop, ", widget.figures()), widget.figures()
    widget.screenshot(screenshots / ("widget-finished.png" if ui == "lab" else f"widget-finished-{ui}.png"))

    # Then a question, typed into the labelled box that question mode shows, and Enter.
    widget.area.get_by_role("button", name="Question").click()
    question = widget.area.get_by_label("Question")
    notebook.expect(question, "the question box, enabled").to_be_enabled()
    question.fill(CHAT_TURNS[0][0])
    question.press("Enter")
    output = widget.area.locator(".widget-output")
    notebook.expect(output, "the answer to the typed question").to_have_text(CHAT_TURNS[0][1])
    widget.wait_idle()


@pytest.mark.timeout(180)
def test_widget_shows_partial_texts_then_the_whole_answer(
    notebook: NotebookPage, real_size_widget: WidgetView, real_size_answer: str, screenshots: Path
) -> None:
    widget = real_size_widget
    widget.watch_output("streaming")

    widget.click_run()
    notebook.wait_seen("streaming", SCREENSHOT_AFTER)
    notebook.expect(widget.stop_button, "Stop to be enabled mid-stream").to_be_enabled()
    widget.screenshot(screenshots / "widget-streaming.png")
    widget.wait_idle()

    shown = [text for text in notebook.seen("streaming") if text]
    print(f"real-size model, {len(shown)} texts the Output showed: {shown!r}; figures: {widget.figures()!r}")
    assert shown[-1] == real_size_answer
    partial = shown[:-1]
    assert len(set(partial)) >= 2, f"fewer than two partial texts before the answer: {shown!r}"
    assert all(real_size_answer.startswith(text) and text != real_size_answer for text in partial), shown
    assert " ended " in widget.figures(), widget.figures()


@pytest.mark.timeout(180)
def test_stop_mid_stream_leaves_a_shorter_text_and_an_idle_widget(
    notebook: NotebookPage, real_size_widget: WidgetView, real_size_answer: str
) -> None:
    widget = real_size_widget
    widget.watch_output("stopped")

    widget.click_run()
    notebook.wait_seen("stopped", 2)
    widget.stop_button.click()
    widget.wait_idle(timeout_ms=20_000)

    stopped = notebook.seen("stopped")[-1]
    print(f"stopped at {stopped!r} of {real_size_answer!r}; figures: {widget.figures()!r}")
    assert stopped, "the text shown before Stop was cleared"
    assert len(stopped) < len(real_size_answer) and real_size_answer.startswith(stopped), (stopped, real_size_answer)
    assert "(cancelled, " in widget.figures(), widget.figures()
    notebook.expect(widget.area.locator(".widget-output"), "the text to stay after Stop", 10_000).to_have_text(stopped)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("ui", ["lab", "notebook7"])
def test_magic_streams_the_caption_into_the_cell_output(ui: str, request: pytest.FixtureRequest) -> None:
    notebook: NotebookPage = request.getfixturevalue("notebook" if ui == "lab" else "notebook7")
    notebook.watch(MAGIC, ".jp-OutputArea-output", "magic")
    notebook.run_cell(MAGIC)

    output = notebook.cell(MAGIC).locator(".jp-OutputArea-output")
    notebook.expect(output, "the caption in the cell's output").to_have_text(CAPTION)
    shown = list(dict.fromkeys(text.strip() for text in notebook.seen("magic") if text.strip()))
    print(f"the magic's cell output showed: {shown!r}")
    assert shown[-1] == CAPTION
    assert all(CAPTION.startswith(text) for text in shown), shown
    assert len(shown) >= 3, f"fewer than two partial texts before the caption: {shown!r}"  # it streams


@pytest.mark.timeout(180)
@pytest.mark.parametrize("ui", ["lab", "notebook7"])
def test_chat_widget_streams_a_second_turn_that_knows_the_first(
    ui: str, request: pytest.FixtureRequest, lab_server: LabServer, screenshots: Path
) -> None:
    notebook: NotebookPage = request.getfixturevalue("notebook" if ui == "lab" else "notebook7")
    notebook.run_cell(CHAT)
    chat = WidgetView(notebook, CHAT)
    chat.upload(lab_server.root / PICTURE, label="Picture")
    box = chat.area.get_by_placeholder("Ask about the picture, then Enter")
    answers = chat.area.locator(".widget-output")
    send = chat.area.get_by_role("button", name="Send")
    for turn, (question, answer) in enumerate(CHAT_TURNS):
        box.fill(question)
        box.press("Enter")  # sends: no button clicked
        notebook.expect(answers.nth(turn), f"answer {turn + 1} in the transcript").to_have_text(answer)
        notebook.expect(box, "the question box emptied").to_have_value("")
        # The whole answer shows a token before the turn ends; an Enter before Send is back is
        # refused ("an answer is coming"), as a person typing fast would see.
        notebook.expect(send, f"Send enabled after answer {turn + 1}").to_be_enabled()
    questions = chat.area.locator(".widget-html", has_text="You:")
    notebook.expect(questions, "both questions in the transcript").to_have_count(2)
    notebook.expect(chat.area.locator(".widget-html", has_text="tokens/s"), "the turn's figures").to_contain_text(
        re.compile(r"ended .*\(stop, ")
    )
    assert answers.nth(1).locator(".jp-RenderedMarkdown").count() == 1, "answers are rendered as Markdown"
    chat.screenshot(screenshots / ("chat-widget.png" if ui == "lab" else f"chat-widget-{ui}.png"))


# Pastes into `box` what a user's Ctrl+V would: a file of `type` holding `base64`, or plain text.
_PASTE = """([box, kind, payload]) => {
  const data = new DataTransfer();
  if (kind === 'text') {
    data.setData('text/plain', payload);
  } else if (kind === 'huge') {
    data.items.add(new File([new Uint8Array(payload)], 'huge.png', {type: 'image/png'}));
  } else {
    const bytes = Uint8Array.from(atob(payload), (c) => c.charCodeAt(0));
    data.items.add(new File([bytes], 'copied.png', {type: kind}));
  }
  box.focus();
  box.dispatchEvent(new ClipboardEvent('paste', {clipboardData: data, bubbles: true, cancelable: true}));
}"""


@pytest.mark.timeout(180)
@pytest.mark.parametrize("ui", ["lab", "notebook7"])
def test_chat_widget_talks_about_a_picture_pasted_from_the_clipboard(
    ui: str, request: pytest.FixtureRequest, lab_server: LabServer
) -> None:
    notebook: NotebookPage = request.getfixturevalue("notebook" if ui == "lab" else "notebook7")
    notebook.run_cell(CHAT)  # a new widget, with no picture
    chat = WidgetView(notebook, CHAT)
    box = chat.area.locator(".vlm-paste-box").element_handle(timeout=WAIT_MS)
    notebook.page.evaluate(_PASTE, [box, "text", "not a picture"])
    refusal = chat.area.get_by_text("The clipboard holds no picture")
    notebook.expect(refusal, "the refusal of a paste without a picture").to_be_visible()
    notebook.page.evaluate(_PASTE, [box, "huge", 9 << 20])  # over what one message to the kernel may carry
    too_large = chat.area.get_by_text("The pasted picture is 9 MB")
    notebook.expect(too_large, "the refusal of a picture too large to send").to_be_visible()
    picture = base64.b64encode((lab_server.root / PICTURE).read_bytes()).decode()
    notebook.page.evaluate(_PASTE, [box, "image/png", picture])
    preview = chat.area.locator("img").element_handle(timeout=WAIT_MS)
    notebook.page.wait_for_function("image => image.naturalWidth > 0", arg=preview, timeout=WAIT_MS)
    question = chat.area.get_by_placeholder("Ask about the picture, then Enter")
    question.fill(CHAT_TURNS[0][0])
    question.press("Enter")
    answer = chat.area.locator(".widget-output").first
    notebook.expect(answer, "the answer about the pasted picture").to_have_text(CHAT_TURNS[0][1])


def _write_notebook(path: Path) -> None:
    """The test notebook: the cells above, no outputs, the environment's Python kernel."""
    cells: list[dict[str, Any]] = [
        {"cell_type": "code", "execution_count": None, "id": f"cell-{index}", "metadata": {}, "outputs": [],
         "source": source}
        for index, source in sorted(CELLS.items())
    ]
    kernelspec = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
    notebook = {"cells": cells, "metadata": {"kernelspec": kernelspec}, "nbformat": 4, "nbformat_minor": 5}
    path.write_text(json.dumps(notebook, indent=1))
