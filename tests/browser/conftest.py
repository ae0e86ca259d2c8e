"""A real JupyterLab in a real browser: the fixtures that start them and always stop them.

JupyterLab (from PyPI) runs on 127.0.0.1 with a token, a temporary notebook directory and
temporary Jupyter config, runtime and settings directories, so nothing of the user's setup
leaks in. Debian's Chromium (``/usr/bin/chromium``) is driven headless by Playwright for
Python; no browser is ever downloaded. Every process started here carries a marker in its
environment, so the teardown can find and kill whatever survives a graceful stop, even the
kernels, which Jupyter starts in process groups of their own.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
# Headless, and nothing that reaches out: without the networking flags Chromium's background
# requests are refused many at a time on a machine without internet.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
MARKER = "VLM_NOTEBOOK_BROWSER_TEST"  # environment variable set on every process started here
SERVER_START_SECONDS = 60
STOP_SECONDS = 15

_INSTALL_HINT = (
    "The browser tests need Debian's Chromium and Playwright for Python: run `make setup` (as root it "
    "installs the apt packages chromium and chromium-driver), or deselect them with -m 'not browser'."
)


@dataclass(frozen=True)
class LabServer:
    """A running JupyterLab: where it listens, its token and the directory it serves."""

    url: str
    token: str
    root: Path

    def notebook_url(self, name: str, ui: str = "lab") -> str:
        """The notebook's page in JupyterLab (``ui="lab"``) or in Notebook 7 (``ui="notebook"``)."""
        path = "lab/tree" if ui == "lab" else "notebooks"
        return f"{self.url}{path}/{name}?token={self.token}"


@pytest.fixture(scope="module")
def process_marker() -> str:
    """A value unique to this module's run, put in the environment of every process it starts."""
    return secrets.token_hex(8)


@pytest.fixture(scope="module")
def lab_server(tmp_path_factory: pytest.TempPathFactory, process_marker: str) -> Iterator[LabServer]:
    """JupyterLab serving an empty temporary directory; stopped (kernels included) at the end."""
    base = tmp_path_factory.mktemp("jupyterlab")
    root = base / "notebooks"
    root.mkdir()
    token = secrets.token_hex(16)
    port = _free_port()
    log_path = base / "jupyterlab.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            _lab_command(root, port, token),
            cwd=root,
            env=_lab_environment(base, f"{process_marker}-lab"),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so the teardown can end it whole
        )
    try:
        url = f"http://127.0.0.1:{port}/"
        _wait_until_serving(process, url, token, log_path)
        yield LabServer(url=url, token=token, root=root)
    finally:
        try:
            _stop_group(process)
        finally:
            _kill_marked(f"{process_marker}-lab")


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory, process_marker: str) -> Iterator[Any]:
    """Debian's headless Chromium under Playwright, with a fresh profile; closed at the end."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing. {_INSTALL_HINT}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(f"Playwright for Python is not installed. {_INSTALL_HINT}")
    profile = tmp_path_factory.mktemp("chromium-profile")
    marker = f"{process_marker}-browser"
    try:
        with sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(
                str(profile),
                executable_path=str(CHROMIUM),
                args=CHROMIUM_FLAGS,
                headless=True,
                env={**os.environ, MARKER: marker},
                viewport={"width": 1100, "height": 900},
                timeout=60_000,
            )
            try:
                yield context
            finally:
                with contextlib.suppress(Exception):  # already gone is fine: the sweep below checks
                    context.close()
    finally:
        _kill_marked(marker)


def _lab_command(root: Path, port: int, token: str) -> list[str]:
    return [
        sys.executable, "-m", "jupyterlab",
        "--no-browser",
        "--allow-root",  # CI containers run as root
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
        "--LabApp.extension_manager=readonly",  # no extension searches on PyPI
        "--LabApp.expose_app_in_browser=True",  # window.jupyterapp: to tell when the kernel is ready
    ]


def _lab_environment(base: Path, marker: str) -> dict[str, str]:
    """The user's environment with Jupyter's own directories moved into ``base``."""
    settings = base / "lab-settings"
    notification = settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    notification.parent.mkdir(parents=True)
    # No "get Jupyter news?" toast over the page, and no requests for news or updates.
    notification.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    environment = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(base / "config"),
        "JUPYTER_RUNTIME_DIR": str(base / "runtime"),
        "JUPYTERLAB_SETTINGS_DIR": str(settings),
        "JUPYTERLAB_WORKSPACES_DIR": str(base / "workspaces"),
        "IPYTHONDIR": str(base / "ipython"),
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        MARKER: marker,
    }
    environment.pop("JUPYTER_PATH", None)
    return environment


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_until_serving(process: subprocess.Popen[bytes], url: str, token: str, log_path: Path) -> None:
    deadline = time.monotonic() + SERVER_START_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"JupyterLab exited with {process.returncode}:\n{_tail(log_path)}")
        try:
            with urllib.request.urlopen(f"{url}api/status?token={token}", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    pytest.fail(f"JupyterLab did not answer within {SERVER_START_SECONDS} s:\n{_tail(log_path)}")


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM first (the server then shuts its kernels down), SIGKILL the group if it lingers."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(STOP_SECONDS)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(STOP_SECONDS)


def _kill_marked(marker: str) -> None:
    """SIGKILL every process still alive that was started with this run's marker."""
    needle = f"{MARKER}={marker}".encode()
    for pid in _marked_pids(needle):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _marked_pids(needle: bytes) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environment = (entry / "environ").read_bytes()
        except OSError:  # gone, or not ours to read
            continue
        if needle in environment.split(b"\0"):
            pids.append(int(entry.name))
    return pids


def _tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])



_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Keep each phase's report on the test, so a fixture can tell that the test failed."""
    report = yield
    item.stash.setdefault(_REPORTS, {})[report.when] = report
    return report


def failed(item: pytest.Item) -> bool:
    """Whether the test's setup or call failed (for evidence saved in teardown)."""
    return any(report.failed for report in item.stash.get(_REPORTS, {}).values())
