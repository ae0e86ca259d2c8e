"""A model on an OpenAI-compatible server (vLLM, SGLang, TGI, Ollama, llama.cpp, ``transformers serve``).

``RemoteVLM`` speaks the chat-completions API with ``stream: true``: the picture goes as a
base64 PNG data URL, the answer comes back as server-sent events (read with httpx), and the
caller gets the same ``TextStream`` and ``StreamStats`` as from a local model, time to first
token measured from the request.

Faults end in a ``RemoteError`` that says what happened, never in a hang: a server that is not
running, an HTTP error (with the server's own message), a connection lost mid-answer, events
that are not the API, and no first token (or no next token) within ``timeout`` seconds
(``RemoteTimeoutError``: keep-alive comments and empty chunks do not count as progress). The
failures worth trying again later (busy, failing, unreachable, dropped) are
``RemoteUnavailableError``, with the server's Retry-After. ``cancel()`` cuts the connection at
once, even while the server is still working on the first token, so a server that notices closed
connections stops generating. A server that ignores ``max_tokens`` is cut off at
``max_new_tokens`` (finish reason "length"), and one event may not exceed a mebibyte.

The API key comes from ``api_key`` or the environment (``VLM_NOTEBOOK_API_KEY``, then
``OPENAI_API_KEY``); it is sent only in the Authorization header, never shown in reprs or errors:
whatever a server says reaches an error with the key and any ``Bearer`` token blanked out.
"""

from __future__ import annotations

import base64
import contextlib
import email.utils
import io
import json
import math
import os
import re
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, Literal

import httpx
from PIL import Image

from .. import caption_options, registry
from ..errors import RemoteError, RemoteTimeoutError, RemoteUnavailableError, RequestError
from ..options import GenerationOptions
from ..request import Request
from ..stream import GenerationCancelled, TokenSink
from .base import VLM

#: Where the API key is looked for when ``api_key`` is not given, in this order.
API_KEY_VARIABLES = ("VLM_NOTEBOOK_API_KEY", "OPENAI_API_KEY")
DEFAULT_TIMEOUT = 120.0
DEFAULT_CONNECT_TIMEOUT = 10.0
_WATCH_SECONDS = 0.05
_MESSAGE_CHARS = 300
_MAX_EVENT_CHARS = 1 << 20  # a chunk is a few hundred characters; an endless line must not fill memory
_MAX_ERROR_BYTES = 64 << 10  # of an error answer's body: any real message fits
_TRAILER_SECONDS = 2.0  # once the answer is complete, how long its usage and [DONE] are waited for
_TRANSIENT_STATUS = frozenset({408, 425, 429, *range(500, 600)})
_BEARER = re.compile(r"(?i)\bbearer\s+[^\s\"'\\,;]+")

Progress = Literal["more", "finished", "stop"]


class RemoteVLM(VLM):
    """A vision-language model served over the OpenAI chat-completions API.

    ``RemoteVLM(base_url="http://host:8000/v1", model="Qwen/Qwen2-VL-2B-Instruct")``, or by name:
    ``RemoteVLM("remote:Qwen/Qwen2-VL-2B-Instruct@http://host:8000/v1")`` (also accepted by
    ``get_model``, the widgets and the magics). ``timeout`` bounds the wait for the first token
    and for each later one; ``connect_timeout`` the wait for a connection.

    Requests to one server run side by side (the server schedules them), unlike a local model.
    """

    family = "remote"
    multi_turn = True
    caption_options = caption_options.names("remote")
    answers_concurrently = True

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    ):
        if base_url is None:  # the name form
            model, base_url = registry.parse_remote_name(model)
        _check_arguments(model, base_url, timeout, connect_timeout)
        self.base_url = base_url.rstrip("/")
        self.model_id = model
        super().__init__(f"{registry.REMOTE_PREFIX}{model}@{self.base_url}")
        self.timeout = timeout
        self._api_key = api_key if api_key is not None else _key_from_environment()
        self._client = httpx.Client(
            base_url=self.base_url + "/",
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            # A fresh connection per answer (cancel cuts it), and as many at once as the caller runs
            # (caption_batch bounds them): a pool limit would queue requests while their timeout runs.
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=0),
        )

    def close(self) -> None:
        """Release the HTTP client (open streams end with an error)."""
        self._client.close()

    def _load(self) -> None:
        """Check that the server answers (any HTTP answer will do, except a refused API key)."""
        timeout = self._client.timeout.connect
        with _redacted(self._api_key):
            try:
                with self._client.stream("GET", "models", headers=self._headers(), timeout=timeout) as response:
                    if response.status_code in (401, 403):  # the list itself is not needed: never read
                        raise _status_error(response, self.base_url)
            except httpx.HTTPError as error:
                raise _transport_error(error, self.base_url, tokens=None) from None

    def _answer(self, request: Request, sink: TokenSink) -> None:
        """The whole conversation goes to the server, the picture in its first message."""
        body = _request_body(self.model_id, request.api_messages(self.default_prompt), request.options)
        self._send(body, request.options, sink)

    def _send(self, body: dict[str, Any], options: GenerationOptions, sink: TokenSink) -> None:
        """Stream the answer to a chat-completions request ``body`` into ``sink``."""
        exchange = _Exchange(sink, self.timeout, options.max_new_tokens)
        try:
            with _redacted(self._api_key):
                self._receive(body, exchange, sink)
        finally:
            exchange.finish()

    def _receive(self, body: dict[str, Any], exchange: _Exchange, sink: TokenSink) -> None:
        """Stream one answer into ``sink``, or raise the error that says why it could not be."""
        try:
            complete = self._stream_answer(body, exchange, sink)
        except httpx.HTTPError as error:
            if not self._ended_on_purpose(exchange):
                raise _transport_error(error, self.base_url, tokens=exchange.tokens) from None
            return
        if not complete and not self._ended_on_purpose(exchange):
            raise RemoteUnavailableError(
                f"The model server at {self.base_url} ended the answer early, after {exchange.tokens} tokens, "
                "without saying it was finished: the server may have stopped. Check it and try again."
            )

    def _ended_on_purpose(self, exchange: _Exchange) -> bool:
        """The connection was cut on purpose: say why, instead of what the cut looked like.
        True when the answer was complete already (cut while waiting for what follows it)."""
        if exchange.cut_reason == "cancel":
            raise GenerationCancelled()
        if exchange.cut_reason == "timeout":
            raise RemoteTimeoutError(_silence_message(self.base_url, self.timeout, exchange.tokens))
        return exchange.cut_reason == "answered"

    def _stream_answer(self, body: dict[str, Any], exchange: _Exchange, sink: TokenSink) -> bool:
        """Stream one answer into ``sink``; True if it is complete (the server said so, or the bound was met)."""
        extensions = {"trace": exchange.trace}
        with self._client.stream(
            "POST", "chat/completions", json=body, headers=self._headers(), extensions=extensions
        ) as response:
            _check_answer(response, self.base_url)
            events = _EventReader(self.base_url)
            complete = False
            for text in response.iter_text():
                for data in events.feed(text):
                    sink.raise_if_cancelled()  # leaving the with block closes the connection
                    progress = "stop" if data.strip() == "[DONE]" else exchange.take(_parse_event(data))
                    if progress == "stop":
                        return True
                    complete = complete or progress == "finished"
        return complete

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}


class _Exchange:
    """One streamed answer: hands events to the sink, and lets a watcher thread cut the connection
    (on cancel, or when no token comes in time) even while the worker waits on the socket."""

    def __init__(self, sink: TokenSink, timeout: float, max_tokens: int):
        self.sink = sink
        self.tokens = 0
        self.cut_reason: str | None = None
        self._timeout = timeout
        self._max_tokens = max_tokens
        self._answered = False  # the server said it was finished, or max_tokens were received
        self._last_progress = 0.0  # when the last token (or the finish) came, on the sink's clock
        self._started = False  # the answer's text has begun (its leading white space is dropped)
        self._held = ""  # half of a surrogate pair, waiting for its other half in the next chunk
        self._socket: socket.socket | None = None
        self._lock = threading.Lock()
        self._done = threading.Event()
        threading.Thread(target=self._watch, name="vlm-notebook-remote-watch", daemon=True).start()

    def trace(self, name: str, info: dict[str, Any]) -> None:
        """httpcore's trace hook: keep the socket of the new connection, so it can be cut."""
        if name == "connection.connect_tcp.complete":
            with self._lock:
                self._socket = info["return_value"].get_extra_info("socket")
                if self.cut_reason is not None:
                    _shut(self._socket)

    def take(self, payload: dict[str, Any]) -> Progress:
        """Hand one chat-completion chunk to the sink: "finished" once the server says the answer is,
        "stop" when it sends text past ``max_tokens`` (it ignores the bound: hang up on it)."""
        if payload.get("error") is not None:  # some servers send "error": null in every chunk
            raise _event_error(payload)
        choices = payload.get("choices")
        if not isinstance(choices, list):
            raise RemoteError(f"The model server sent an event that is not a chat-completion chunk: {_clip(payload)}")
        usage = payload.get("usage")
        if isinstance(usage, dict) and isinstance(usage.get("prompt_tokens"), int):
            self.sink.set_prompt(usage["prompt_tokens"], 0)  # the server does not say how many are the picture's
        return self._take_choice(choices[0]) if choices else "more"

    def _take_choice(self, choice: Any) -> Progress:
        delta = choice.get("delta") if isinstance(choice, dict) else None
        content = delta.get("content") if isinstance(delta, dict) else None
        if content is not None and not isinstance(content, str):
            raise RemoteError(f"The model server sent an event whose text is not a string: {_clip(choice)}")
        if content:  # an empty chunk is no token: it must not keep a stuck answer alive
            if self.tokens >= self._max_tokens:
                return "stop"
            self._take_token(content)
        reason = choice.get("finish_reason") if isinstance(choice, dict) else None
        if isinstance(reason, str):
            self.sink.set_finish_reason(reason)
        elif self._answered or self.tokens < self._max_tokens:
            return "finished" if self._answered else "more"
        else:
            self.sink.set_finish_reason("length")  # the bound, met: the server may say so itself next
        self._answered = True
        self._last_progress = self.sink.elapsed()
        return "finished"

    def _take_token(self, content: str) -> None:
        self.tokens += 1
        self._last_progress = self.sink.elapsed()
        content = self._whole_characters(content)
        if not self._started:
            content = content.lstrip()
            self._started = bool(content)
        self.sink.put_token(content)

    def _whole_characters(self, content: str) -> str:
        """JSON may split an emoji into two escaped halves (surrogates), even across chunks: join
        them, and replace a lone half, which no file or display could encode."""
        content, self._held = self._held + content, ""
        if "\ud800" <= content[-1] <= "\udbff":
            content, self._held = content[:-1], content[-1]
        return content.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")

    def finish(self) -> None:
        self._done.set()

    def _watch(self) -> None:
        while not self._done.wait(_WATCH_SECONDS):
            reason = self._reason_to_cut()
            if reason is not None:
                self._cut(reason)
                return

    def _reason_to_cut(self) -> str | None:
        if self.sink.cancelled:
            return "cancel"
        silent = self.sink.elapsed() - self._last_progress  # since the last token, not the last byte
        if self._answered:
            return "answered" if silent > min(self._timeout, _TRAILER_SECONDS) else None
        return "timeout" if silent > self._timeout else None

    def _cut(self, reason: str) -> None:
        with self._lock:
            self.cut_reason = reason
            if self._socket is not None:
                _shut(self._socket)


class _EventReader:
    """Server-sent events, read from the answer's text: the data of each event, comments and other
    fields skipped. Unlike a reader that buffers without limit, it refuses an event (or a line)
    longer than ``_MAX_EVENT_CHARS``: a broken server's endless line must not fill the memory."""

    def __init__(self, base_url: str):
        self._base_url = base_url
        self._line: list[str] = []  # the line received so far
        self._line_size = 0
        self._data: list[str] = []  # the data lines of the event received so far
        self._data_size = 0
        self._after_cr = False  # the last text ended in "\r": a "\n" starting the next one is the same break

    def feed(self, text: str) -> list[str]:
        """The data of each event ``text`` completes."""
        if self._after_cr and text.startswith("\n"):
            text = text[1:]
        self._after_cr = text.endswith("\r")
        *lines, rest = re.split(r"\r\n|\r|\n", text)
        events = []
        for piece in lines:
            line = "".join(self._line) + piece
            self._line, self._line_size = [], 0
            event = self._take_line(line)
            if event is not None:
                events.append(event)
        self._line.append(rest)
        self._line_size += len(rest)
        self._check_size()
        return events

    def _take_line(self, line: str) -> str | None:
        if not line:  # a blank line ends the event
            event = "\n".join(self._data) if self._data else None
            self._data, self._data_size = [], 0
            return event
        name, _, value = line.partition(":")
        if name == "data":  # a comment (":" first) or another field (event, id, retry) says nothing to us
            self._data.append(value.removeprefix(" "))
            self._data_size += len(value)
            self._check_size()
        return None

    def _check_size(self) -> None:
        if self._line_size + self._data_size > _MAX_EVENT_CHARS:
            raise RemoteError(
                f"The model server at {self._base_url} sent an event of more than {_MAX_EVENT_CHARS:,} characters "
                "(a chat-completion chunk has a few hundred): it is not the chat-completions API, or it is broken."
            )


def _shut(connection: socket.socket) -> None:
    """Wake a thread blocked reading the socket and close the connection (both directions)."""
    with contextlib.suppress(OSError):  # already closed
        connection.shutdown(socket.SHUT_RDWR)


#: Seeds a server takes (the OpenAI API's are signed 64-bit); larger ones are reduced modulo this.
_SERVER_SEEDS = 2**63


def _request_body(model: str, messages: list[dict[str, Any]], options: GenerationOptions) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "messages": [_api_message(message) for message in messages],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": options.max_new_tokens,
        "temperature": 0.0 if options.greedy else options.temperature,  # a tiny temperature is greedy here too
        "top_p": options.top_p,
    }
    if options.seed is not None:
        body["seed"] = options.seed % _SERVER_SEEDS  # the API's seed is a signed 64-bit integer
    return body


def _api_message(message: dict[str, Any]) -> dict[str, Any]:
    """A chat message as the API takes it: a picture becomes a PNG data URL."""
    content = message["content"]
    if isinstance(content, list):
        content = [
            {"type": "image_url", "image_url": {"url": _data_url(part["image"])}} if part["type"] == "image" else part
            for part in content
        ]
    return {"role": message["role"], "content": content}


def _data_url(picture: Image.Image) -> str:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _check_answer(response: httpx.Response, base_url: str) -> None:
    """Raise unless the server answered with a stream of events."""
    if response.status_code >= 400:
        raise _status_error(response, base_url)
    if response.is_redirect:  # never followed: a POST must not be resent elsewhere unasked
        raise RemoteError(
            f"The model server at {base_url} answered {response.status_code}, sending the request to "
            f"{_clip(response.headers.get('location', '?'))}: if that is the server, use it as base_url."
        )
    content_type = response.headers.get("content-type", "").partition(";")[0].strip().lower()
    if content_type != "text/event-stream":
        raise RemoteError(
            f"The model server at {base_url} did not answer with a stream of events (its answer is "
            f"{content_type or 'of no stated type'}): check that base_url is an OpenAI-compatible API root."
        )


def _parse_event(data: str) -> dict[str, Any]:
    try:
        payload = json.loads(data)
    except json.JSONDecodeError:
        payload = None
    if not isinstance(payload, dict):
        raise RemoteError(f"The model server sent an event that is not a JSON object: {data[:_MESSAGE_CHARS]!r}")
    return payload


def _event_error(payload: dict[str, Any]) -> RemoteError:
    """An error the server sent in the stream; one with a busy or failing status is worth trying again."""
    message = f"The model server reported an error during the answer: {_message_of(payload)}"
    detail = payload.get("error")
    code = detail.get("code") if isinstance(detail, dict) else None
    if isinstance(code, int) and code in _TRANSIENT_STATUS:
        return RemoteUnavailableError(message, status_code=code)
    return RemoteError(message)


def _status_error(response: httpx.Response, base_url: str) -> RemoteError:
    code = response.status_code
    message = _message_of(_json_or_text(_error_body(response), response.reason_phrase))
    hint = {
        401: " Check the API key (api_key=, or the VLM_NOTEBOOK_API_KEY or OPENAI_API_KEY variable).",
        403: " Check the API key (api_key=, or the VLM_NOTEBOOK_API_KEY or OPENAI_API_KEY variable).",
        404: " Check the model name and that base_url is the API's root (it usually ends in /v1).",
    }.get(code, "")
    text = f"The model server at {base_url} answered {code} {response.reason_phrase}: {message}.{hint}"
    if code in _TRANSIENT_STATUS:
        return RemoteUnavailableError(text, status_code=code, retry_after=_retry_after(response))
    return RemoteError(text, status_code=code)


def _error_body(response: httpx.Response) -> bytes:
    """The start of an error answer's body: a server sending gigabytes must not fill the memory."""
    body = b""
    for piece in response.iter_bytes():
        body += piece
        if len(body) >= _MAX_ERROR_BYTES:
            break
    return body[:_MAX_ERROR_BYTES]


def _retry_after(response: httpx.Response) -> float | None:
    """Seconds the server asks to wait before trying again (Retry-After: seconds or a date), if it says."""
    value = response.headers.get("retry-after", "").strip()
    seconds: float | None
    try:
        seconds = float(value)
    except ValueError:
        seconds = _seconds_until(value)
    return seconds if seconds is not None and math.isfinite(seconds) and seconds >= 0 else None


def _seconds_until(date: str) -> float | None:
    try:
        when = email.utils.parsedate_to_datetime(date)
    except (TypeError, ValueError, IndexError):
        return None
    when = when if when.tzinfo is not None else when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _transport_error(error: Exception, base_url: str, tokens: int | None) -> RemoteError:
    described = _clip(str(error) or type(error).__name__)
    if isinstance(error, httpx.ConnectTimeout):
        return RemoteTimeoutError(f"No connection to the model server at {base_url} in time: check base_url.")
    if isinstance(error, httpx.ConnectError):
        return RemoteUnavailableError(
            f"Cannot connect to the model server at {base_url} ({described}): start the server, or check base_url."
        )
    if isinstance(error, httpx.TimeoutException):
        return _silence_error(base_url)
    failure = RemoteUnavailableError if isinstance(error, httpx.TransportError) else RemoteError
    if tokens:
        return failure(
            f"The connection to the model server at {base_url} was lost after {tokens} tokens of the answer "
            f"({described}): the server may have stopped. Check it and try again."
        )
    return failure(
        f"The connection to the model server at {base_url} failed ({described}): "
        "the server may have stopped. Check it and try again."
    )


def _silence_error(base_url: str) -> RemoteTimeoutError:
    return RemoteTimeoutError(
        f"The model server at {base_url} went silent for longer than the timeout: it may be overloaded or "
        "stuck. Try again, or pass a larger timeout= to RemoteVLM."
    )


def _silence_message(base_url: str, timeout: float, tokens: int) -> str:
    waited = "no first token" if not tokens else f"no more of the answer after {tokens} tokens"
    return (
        f"The model server at {base_url} sent {waited} within {timeout:g} s: it may be overloaded or stuck. "
        "Try again, or pass a larger timeout= to RemoteVLM."
    )


def _json_or_text(body: bytes, fallback: str) -> Any:
    try:
        return json.loads(body)
    except ValueError:  # not JSON, or not UTF-8
        return body.decode("utf-8", "replace").strip() or fallback


def _message_of(payload: Any) -> str:
    """The server's own words from an error body: OpenAI's {"error": {"message"}}, FastAPI's {"detail"}, ..."""
    for key in ("error", "detail", "message"):
        if isinstance(payload, dict) and key in payload:
            return _message_of(payload[key])
    return _clip(payload)


def _clip(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= _MESSAGE_CHARS else text[:_MESSAGE_CHARS] + "…"


@contextlib.contextmanager
def _redacted(api_key: str | None) -> Iterator[None]:
    """Blank out the key in any error raised inside: a server may echo it in whatever it says."""
    try:
        yield
    except RemoteError as error:
        error.args = (_redact(str(error), api_key),)
        raise


def _redact(text: str, api_key: str | None) -> str:
    if api_key:
        text = text.replace(api_key, "***")
    return _BEARER.sub("Bearer ***", text)


def _key_from_environment() -> str | None:
    return next((os.environ[name] for name in API_KEY_VARIABLES if os.environ.get(name)), None)


def _check_arguments(model: str, base_url: str, timeout: float, connect_timeout: float) -> None:
    if not isinstance(model, str) or not model.strip():
        raise RequestError("RemoteVLM needs the model's name on the server, e.g. model='Qwen/Qwen2-VL-2B-Instruct'.")
    _check_base_url(base_url)
    for name, value in (("timeout", timeout), ("connect_timeout", connect_timeout)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise RequestError(f"{name} must be a number of seconds above 0, got {value!r}.")


def _check_base_url(base_url: str) -> None:
    example = "(e.g. 'http://localhost:8000/v1')"
    if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
        raise RequestError(
            f"base_url must be the server's API root, starting with http:// or https:// {example}, got {base_url!r}."
        )
    try:
        url = httpx.URL(base_url)
    except httpx.InvalidURL as error:
        raise RequestError(f"base_url {base_url!r} is not a URL ({error}): write the API root {example}.") from None
    if url.userinfo:  # not shown: it holds a password
        raise RequestError(
            "base_url holds a user name or password, which would show in the model's name and in errors: "
            "leave them out, and give the key as api_key= or in VLM_NOTEBOOK_API_KEY."
        )
    if not url.host or (url.port is not None and not 0 < url.port < 65536):
        raise RequestError(f"base_url {base_url!r} needs a host and a port from 1 to 65535 {example}.")
    if url.query or url.fragment:
        raise RequestError(f"base_url {base_url!r} must be the API root, without '?...' or '#...' {example}.")
