"""A model on an OpenAI-compatible server (vLLM, SGLang, TGI, Ollama, llama.cpp, ``transformers serve``).

``RemoteVLM`` speaks the chat-completions API with ``stream: true``: the picture goes as a
base64 PNG data URL, the answer comes back as server-sent events (read with httpx and
httpx-sse), and the caller gets the same ``TextStream`` and ``StreamStats`` as from a local
model, time to first token measured from the request.

Faults end in a ``RemoteError`` that says what happened, never in a hang: a server that is not
running, an HTTP error (with the server's own message), a connection lost mid-answer, events
that are not the API, and no first token (or no next event) within ``timeout`` seconds
(``RemoteTimeoutError``). ``cancel()`` cuts the connection at once, even while the server is
still working on the first token, so a server that notices closed connections stops generating.

The API key comes from ``api_key`` or the environment (``VLM_NOTEBOOK_API_KEY``, then
``OPENAI_API_KEY``); it is sent only in the Authorization header, never shown in reprs or errors.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import socket
import threading
from functools import partial
from typing import Any, Literal, overload

import httpx
import httpx_sse
from PIL import Image

from .. import registry
from ..errors import RemoteError, RemoteTimeoutError, RequestError
from ..images import load_image
from ..languages import CAPTION_PROMPTS, caption_prompt
from ..options import DEFAULT_MAX_NEW_TOKENS, GenerationOptions, clean_question
from ..stream import GenerationCancelled, TextStream, TokenSink
from .base import VLM

#: Where the API key is looked for when ``api_key`` is not given, in this order.
API_KEY_VARIABLES = ("VLM_NOTEBOOK_API_KEY", "OPENAI_API_KEY")
DEFAULT_TIMEOUT = 120.0
DEFAULT_CONNECT_TIMEOUT = 10.0
_WATCH_SECONDS = 0.05
_MESSAGE_CHARS = 300


class RemoteVLM(VLM):
    """A vision-language model served over the OpenAI chat-completions API.

    ``RemoteVLM(base_url="http://host:8000/v1", model="Qwen/Qwen2-VL-2B-Instruct")``, or by name:
    ``RemoteVLM("remote:Qwen/Qwen2-VL-2B-Instruct@http://host:8000/v1")`` (also accepted by
    ``get_model``, the widgets and the magics). ``timeout`` bounds the wait for the first token
    and for each later event; ``connect_timeout`` the wait for a connection.

    Requests to one server run side by side (the server schedules them), unlike a local model.
    """

    family = "remote"
    caption_options = ("prompt", "language")
    default_prompt = CAPTION_PROMPTS["en"]

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
            limits=httpx.Limits(max_keepalive_connections=0),  # a fresh connection per answer: cancel cuts it
        )

    @overload
    def caption(
        self, image: Any, prompt: str | None = None, language: str | None = None, *, stream: Literal[False] = False,
        max_new_tokens: int = ..., temperature: float = ..., top_p: float = ..., seed: int | None = ...,
    ) -> str: ...

    @overload
    def caption(
        self, image: Any, prompt: str | None = None, language: str | None = None, *, stream: Literal[True],
        max_new_tokens: int = ..., temperature: float = ..., top_p: float = ..., seed: int | None = ...,
    ) -> TextStream: ...

    @overload
    def caption(
        self, image: Any, prompt: str | None = None, language: str | None = None, *, stream: bool,
        max_new_tokens: int = ..., temperature: float = ..., top_p: float = ..., seed: int | None = ...,
    ) -> str | TextStream: ...

    def caption(
        self, image: Any, prompt: str | None = None, language: str | None = None, *, stream: bool = False,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, temperature: float = 0.0, top_p: float = 1.0,
        seed: int | None = None,
    ) -> str | TextStream:
        """Describe ``image``: with ``prompt``, or with the caption prompt written in ``language``
        (en, ja, zh, ko, fr, de, es; the same prompts as ``Qwen2VL``), default "Describe this image."."""
        if prompt is not None and language is not None:
            raise RequestError("Give a caption prompt or a language, not both: the language picks the prompt.")
        options = GenerationOptions(max_new_tokens, temperature, top_p, seed)
        text = clean_question(prompt) if prompt is not None else caption_prompt(language or "en")
        return self._respond(image, text, options, stream)

    def close(self) -> None:
        """Release the HTTP client (open streams end with an error)."""
        self._client.close()

    def _load(self) -> None:
        """Check that the server answers (any HTTP answer will do, except a refused API key)."""
        try:
            response = self._client.get("models", headers=self._headers(), timeout=self._client.timeout.connect)
        except httpx.HTTPError as error:
            raise _transport_error(error, self.base_url, tokens=None) from None
        if response.status_code in (401, 403):
            raise _status_error(response, self.base_url, self._api_key)

    def _respond(self, image: Any, prompt: str, options: GenerationOptions, stream: bool) -> str | TextStream:
        picture = load_image(image)
        self.load()
        answer = TextStream(partial(self._produce, picture, prompt, options))  # no lock: the server schedules
        if stream:
            return answer
        with answer:
            return "".join(answer)

    def _produce(self, picture: Image.Image, prompt: str, options: GenerationOptions, sink: TokenSink) -> None:
        body = _request_body(self.model_id, picture, prompt, options)
        exchange = _Exchange(sink, self.timeout)
        try:
            complete = self._stream_answer(body, exchange, sink)
        except (httpx.HTTPError, httpx_sse.SSEError) as error:
            self._raise_if_cut(exchange)
            raise _transport_error(error, self.base_url, tokens=exchange.tokens) from None
        finally:
            exchange.finish()
        if not complete:
            self._raise_if_cut(exchange)
            raise RemoteError(
                f"The model server at {self.base_url} ended the answer early, after {exchange.tokens} tokens, "
                "without saying it was finished: the server may have stopped. Check it and try again."
            )

    def _raise_if_cut(self, exchange: _Exchange) -> None:
        """The connection was cut on purpose: say why, instead of what the cut looked like."""
        if exchange.cut_reason == "cancel":
            raise GenerationCancelled()
        if exchange.cut_reason == "timeout":
            raise RemoteTimeoutError(
                f"The model server at {self.base_url} sent no first token within {self.timeout:g} s: it may be "
                "overloaded or stuck. Try again, or pass a larger timeout= to RemoteVLM."
            )

    # VLM's token-id hooks do not apply: a server sends text, and _respond above replaces the path
    # that would call them (it also runs requests side by side instead of under the model's lock).
    def _generate(
        self, picture: Image.Image, prompt: str, options: GenerationOptions, sink: TokenSink | None
    ) -> list[int]:
        raise NotImplementedError("RemoteVLM receives text, not token ids: it answers through _respond.")

    def _stream_answer(self, body: dict[str, Any], exchange: _Exchange, sink: TokenSink) -> bool:
        """Stream one answer into ``sink``; True if the server said it was finished."""
        extensions = {"trace": exchange.trace}
        with self._client.stream(
            "POST", "chat/completions", json=body, headers=self._headers(), extensions=extensions
        ) as response:
            if response.status_code >= 400:
                response.read()
                raise _status_error(response, self.base_url, self._api_key)
            complete = False
            for event in httpx_sse.EventSource(response).iter_sse():
                sink.raise_if_cancelled()  # leaving the with block closes the connection
                if event.data.strip() == "[DONE]":
                    return True
                complete = exchange.take(_parse_event(event.data, self._api_key)) or complete
        return complete

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}


class _Exchange:
    """One streamed answer: hands events to the sink, and lets a watcher thread cut the connection
    (on cancel, or when no first token comes in time) even while the worker waits on the socket."""

    def __init__(self, sink: TokenSink, first_token_timeout: float):
        self.sink = sink
        self.tokens = 0
        self.cut_reason: str | None = None
        self._first_token_timeout = first_token_timeout
        self._started = False  # the answer's text has begun (its leading white space is dropped)
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

    def take(self, payload: dict[str, Any]) -> bool:
        """Hand one chat-completion chunk to the sink; True once it says the answer is finished."""
        if "error" in payload:
            raise RemoteError(f"The model server reported an error during the answer: {_message_of(payload)}")
        choices = payload.get("choices")
        if not isinstance(choices, list):
            raise RemoteError(f"The model server sent an event that is not a chat-completion chunk: {_clip(payload)}")
        usage = payload.get("usage")
        if isinstance(usage, dict) and isinstance(usage.get("prompt_tokens"), int):
            self.sink.set_prompt(usage["prompt_tokens"], 0)  # the server does not say how many are the picture's
        finished = False
        for choice in choices[:1]:
            finished = self._take_choice(choice)
        return finished

    def _take_choice(self, choice: Any) -> bool:
        delta = choice.get("delta") if isinstance(choice, dict) else None
        content = delta.get("content") if isinstance(delta, dict) else None
        if content is not None and not isinstance(content, str):
            raise RemoteError(f"The model server sent an event whose text is not a string: {_clip(choice)}")
        if content is not None:
            self.tokens += 1
            if not self._started:
                content = content.lstrip()
                self._started = bool(content)
            self.sink.put_token(content)
        reason = choice.get("finish_reason") if isinstance(choice, dict) else None
        if isinstance(reason, str):
            self.sink.set_finish_reason(reason)
            return True
        return False

    def finish(self) -> None:
        self._done.set()

    def _watch(self) -> None:
        while not self._done.wait(_WATCH_SECONDS):
            if self.sink.cancelled:
                self._cut("cancel")
            elif self.tokens == 0 and self.sink.elapsed() > self._first_token_timeout:
                self._cut("timeout")
            else:
                continue
            return

    def _cut(self, reason: str) -> None:
        with self._lock:
            self.cut_reason = reason
            if self._socket is not None:
                _shut(self._socket)


def _shut(connection: socket.socket) -> None:
    """Wake a thread blocked reading the socket and close the connection (both directions)."""
    with contextlib.suppress(OSError):  # already closed
        connection.shutdown(socket.SHUT_RDWR)


def _request_body(model: str, picture: Image.Image, prompt: str, options: GenerationOptions) -> dict[str, Any]:
    content = [
        {"type": "image_url", "image_url": {"url": _data_url(picture)}},
        {"type": "text", "text": prompt},
    ]
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": options.max_new_tokens,
        "temperature": options.temperature,
        "top_p": options.top_p,
    }
    if options.seed is not None:
        body["seed"] = options.seed
    return body


def _data_url(picture: Image.Image) -> str:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _parse_event(data: str, api_key: str | None) -> dict[str, Any]:
    try:
        payload = json.loads(data)
    except json.JSONDecodeError:
        payload = None
    if not isinstance(payload, dict):
        shown = _redact(data[:_MESSAGE_CHARS], api_key)
        raise RemoteError(f"The model server sent an event that is not a JSON object: {shown!r}")
    return payload


def _status_error(response: httpx.Response, base_url: str, api_key: str | None) -> RemoteError:
    code = response.status_code
    message = _redact(_message_of(_json_or_text(response)), api_key)
    hint = {
        401: " Check the API key (api_key=, or the VLM_NOTEBOOK_API_KEY or OPENAI_API_KEY variable).",
        403: " Check the API key (api_key=, or the VLM_NOTEBOOK_API_KEY or OPENAI_API_KEY variable).",
        404: " Check the model name and that base_url is the API's root (it usually ends in /v1).",
    }.get(code, "")
    return RemoteError(
        f"The model server at {base_url} answered {code} {response.reason_phrase}: {message}.{hint}", status_code=code
    )


def _transport_error(error: Exception, base_url: str, tokens: int | None) -> RemoteError:
    if isinstance(error, httpx.ConnectTimeout):
        return RemoteTimeoutError(f"No connection to the model server at {base_url} in time: check base_url.")
    if isinstance(error, httpx.ConnectError):
        return RemoteError(
            f"Cannot connect to the model server at {base_url} ({error}): start the server, or check base_url."
        )
    if isinstance(error, httpx.TimeoutException):
        return RemoteTimeoutError(
            f"The model server at {base_url} went silent for longer than the timeout: it may be overloaded or "
            "stuck. Try again, or pass a larger timeout= to RemoteVLM."
        )
    if isinstance(error, httpx_sse.SSEError):
        return RemoteError(f"The model server at {base_url} did not answer with a stream of events ({error}).")
    if tokens:
        return RemoteError(
            f"The connection to the model server at {base_url} was lost after {tokens} tokens of the answer "
            f"({error or type(error).__name__}): the server may have stopped. Check it and try again."
        )
    return RemoteError(
        f"The connection to the model server at {base_url} failed ({error or type(error).__name__}): "
        "the server may have stopped. Check it and try again."
    )


def _json_or_text(response: httpx.Response) -> Any:
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return response.text.strip() or response.reason_phrase


def _message_of(payload: Any) -> str:
    """The server's own words from an error body: OpenAI's {"error": {"message"}}, FastAPI's {"detail"}, ..."""
    for key in ("error", "detail", "message"):
        if isinstance(payload, dict) and key in payload:
            return _message_of(payload[key])
    return payload if isinstance(payload, str) else _clip(payload)


def _clip(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= _MESSAGE_CHARS else text[:_MESSAGE_CHARS] + "…"


def _redact(text: str, api_key: str | None) -> str:
    return text.replace(api_key, "***") if api_key else text


def _key_from_environment() -> str | None:
    return next((os.environ[name] for name in API_KEY_VARIABLES if os.environ.get(name)), None)


def _check_arguments(model: str, base_url: str, timeout: float, connect_timeout: float) -> None:
    if not isinstance(model, str) or not model.strip():
        raise RequestError("RemoteVLM needs the model's name on the server, e.g. model='Qwen/Qwen2-VL-2B-Instruct'.")
    if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
        raise RequestError(
            f"base_url must be the server's API root, starting with http:// or https:// "
            f"(e.g. 'http://localhost:8000/v1'), got {base_url!r}."
        )
    for name, value in (("timeout", timeout), ("connect_timeout", connect_timeout)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise RequestError(f"{name} must be a number of seconds above 0, got {value!r}.")

