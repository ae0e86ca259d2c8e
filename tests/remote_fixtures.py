"""Servers for the remote-model tests, all on 127.0.0.1: a real ``transformers serve`` in a subprocess,
and tiny standard-library HTTP servers that misbehave on purpose (errors, bad events, stalls)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

from vlm_notebook.registry import CHECKPOINTS_DIR

LAUNCHER = Path(__file__).with_name("remote_server.py")
START_SECONDS = 180.0  # loading the tiny checkpoints takes seconds; a busy shared machine, more
STOP_SECONDS = 15.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Served:
    """A running ``transformers serve``: its API root, model name and process."""

    base_url: str
    model: str
    process: subprocess.Popen[bytes]
    log: Path


@contextlib.contextmanager
def transformers_serve(directory: Path, log_dir: Path) -> Iterator[Served]:
    """Start ``transformers serve`` pinned to a checkpoint directory; always stop it (bounded waits).

    The port is free when chosen but another program may take it before the server binds it:
    then the server exits saying so, and it is started again on another port (three tries)."""
    for attempt in range(3):
        port = free_port()
        log = log_dir / f"serve-{directory.name}-{port}.log"
        process = _start_serve(directory, port, log)
        try:
            _wait_until_healthy(port, process, log)
        except PortTaken:
            stop(process)
            if attempt == 2:
                raise
            continue
        except BaseException:
            stop(process)
            raise
        try:
            yield Served(f"http://127.0.0.1:{port}/v1", str(directory), process, log)
        finally:
            stop(process)
        return


class PortTaken(RuntimeError):
    """The server could not bind its port: another program took it after it was chosen."""


def _start_serve(directory: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    command = [
        sys.executable, str(LAUNCHER), "serve", str(directory), "--device", "cpu", "--dtype", "float32",
        "--host", "127.0.0.1", "--port", str(port),
    ]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    with log.open("wb") as output:
        return subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=environment)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_SECONDS)


def _wait_until_healthy(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            text = log.read_text(errors="replace")
            error = PortTaken if "address already in use" in text.lower() else RuntimeError
            raise error(f"transformers serve exited ({process.returncode}):\n{text[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return
        time.sleep(0.3)
    raise RuntimeError(f"transformers serve not ready after {START_SECONDS} s:\n{log.read_text()[-3000:]}")


# Tiny misbehaving servers ------------------------------------------------------------------------

Behaviour = Callable[["Handler"], None]


@dataclass
class TinyServer:
    """What a tiny server saw: requests (their headers and bodies) and when a client hung up."""

    base_url: str
    requests: list[dict[str, object]] = field(default_factory=list)
    hung_up: threading.Event = field(default_factory=threading.Event)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    behaviour: Behaviour
    record: TinyServer
    body: object = None

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        body = json.loads(self.rfile.read(length) or b"{}")
        self.body = body  # this request's own (record.requests[-1] may be another's when several come at once)
        self.record.requests.append({"headers": dict(self.headers), "body": body, "path": self.path})
        type(self).behaviour(self)

    def do_GET(self) -> None:
        self.send_json(200, {"object": "list", "data": []})

    def send_json(self, status: int, payload: object) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def start_events(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

    def send_event(self, data: str) -> None:
        self.wfile.write(f"data: {data}\n\n".encode())
        self.wfile.flush()

    def wait_for_hang_up(self, seconds: float) -> None:
        """Block until the client closes the connection (then note it), or ``seconds`` pass."""
        self.connection.settimeout(seconds)
        with contextlib.suppress(OSError):
            if self.connection.recv(1) == b"":
                self.record.hung_up.set()

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass


class _Server(ThreadingHTTPServer):
    # The standard library listens with a backlog of 5: with 120 requests connecting at once on a busy
    # machine, one was turned away and retried (a real server's backlog is hundreds).
    request_queue_size = 256
    daemon_threads = True


@contextlib.contextmanager
def tiny_server(behaviour: Behaviour) -> Iterator[TinyServer]:
    """A standard-library HTTP server on 127.0.0.1 that answers every POST with ``behaviour``."""
    server = _Server(("127.0.0.1", 0), Handler)
    record = TinyServer(f"http://127.0.0.1:{server.server_address[1]}/v1")
    server.RequestHandlerClass = type("Bound", (Handler,), {"behaviour": staticmethod(behaviour), "record": record})
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield record
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def chunk(content: str | None = None, finish_reason: str | None = None) -> str:
    """One chat-completion chunk as JSON, as servers stream them."""
    delta = {} if content is None else {"content": content}
    return json.dumps({"object": "chat.completion.chunk", "choices": [
        {"index": 0, "delta": delta, "finish_reason": finish_reason}
    ]})


def random_weights_copy(checkpoint: str, directory: Path) -> Path:
    """A shipped checkpoint's architecture, processor and tokenizer with freshly initialised weights.

    Random weights almost never pick the end-of-answer token, so an answer runs until
    ``max_new_tokens``: a long stream to break in the middle.
    """
    import shutil

    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    source = CHECKPOINTS_DIR / checkpoint
    for part in source.iterdir():
        if part.name not in ("model.safetensors", "config.json", "generation_config.json"):
            shutil.copy(part, directory / part.name)
    config = AutoConfig.from_pretrained(source)
    config.text_config.max_position_embeddings = 1 << 16
    torch.manual_seed(0)
    AutoModelForImageTextToText.from_config(config, dtype=torch.float32).save_pretrained(directory)
    return directory
