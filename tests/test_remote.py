"""RemoteVLM against a real ``transformers serve`` and against small servers that misbehave on purpose.

Everything runs on 127.0.0.1: the shipped checkpoints served by transformers' own server must
stream the same answer as the same checkpoint run locally, and every fault (no server, HTTP
errors, bad events, stalls, a server killed mid-answer, cancel) must end fast with a clear error.
"""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from remote_fixtures import (
    Behaviour,
    Handler,
    Served,
    chunk,
    random_weights_copy,
    tiny_server,
    transformers_serve,
)

from vlm_notebook import registry
from vlm_notebook.cli import main
from vlm_notebook.errors import RemoteError, RemoteTimeoutError, RequestError, UnknownModelError
from vlm_notebook.models import Qwen2VL, SmolVLM
from vlm_notebook.models.remote import RemoteVLM
from vlm_notebook.registry import CHECKPOINTS_DIR
from vlm_notebook.stream import TextStream
from vlm_notebook.widgets import VLMWidget

ASSETS = Path(__file__).parents[1] / "vlm_notebook" / "assets"
PICTURES = sorted(ASSETS.glob("*.png"))
RED_CIRCLE = ASSETS / "red-circle-on-white.png"


@pytest.fixture(scope="module")
def served_smolvlm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with transformers_serve(CHECKPOINTS_DIR / "shapes-smolvlm", tmp_path_factory.mktemp("serve")) as served:
        yield served


@pytest.fixture(scope="module")
def served_qwen2vl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with transformers_serve(CHECKPOINTS_DIR / "shapes-qwen2vl", tmp_path_factory.mktemp("serve")) as served:
        yield served


@pytest.fixture(scope="module")
def local_qwen2vl() -> Qwen2VL:
    model = Qwen2VL("shapes-qwen2vl")
    model.load()
    return model


def remote(served: Served) -> RemoteVLM:
    return RemoteVLM(base_url=served.base_url, model=served.model)


def streamed(result: str | TextStream) -> tuple[list[str], TextStream]:
    assert isinstance(result, TextStream)
    with result:
        return list(result), result


# The same answers as the local model ---------------------------------------------------------------


@pytest.mark.timeout(240)
@pytest.mark.parametrize("picture", PICTURES, ids=lambda path: path.stem)
def test_a_served_smolvlm_streams_the_local_caption_chunk_for_chunk(
    served_smolvlm: Served, shapes_smolvlm: SmolVLM, picture: Path
) -> None:
    chunks, stream = streamed(remote(served_smolvlm).caption(picture, stream=True))
    local_chunks, local = streamed(shapes_smolvlm.caption(picture, stream=True))
    assert "".join(chunks) == shapes_smolvlm.caption(picture), "the remote caption differs from the local one"
    assert chunks == local_chunks, "one chunk per token, as locally"
    assert stream.stats.finish_reason == "stop"
    assert stream.stats.prompt_tokens == local.stats.prompt_tokens, "the server saw the same prompt"


@pytest.mark.timeout(240)
@pytest.mark.parametrize("language", ["en", "ja"])
@pytest.mark.parametrize("picture", PICTURES[:2], ids=lambda path: path.stem)
def test_a_served_qwen2vl_streams_the_local_caption_in_english_and_japanese(
    served_qwen2vl: Served, local_qwen2vl: Qwen2VL, picture: Path, language: str
) -> None:
    chunks, stream = streamed(remote(served_qwen2vl).caption(picture, language=language, stream=True))
    local_chunks, local = streamed(local_qwen2vl.caption(picture, language, stream=True))
    assert "".join(chunks) == local_qwen2vl.caption(picture, language)
    assert chunks == local_chunks
    assert stream.stats.prompt_tokens == local.stats.prompt_tokens


@pytest.mark.timeout(240)
def test_questions_and_whole_answers_match_the_local_model(served_qwen2vl: Served, local_qwen2vl: Qwen2VL) -> None:
    model = remote(served_qwen2vl)
    for question in ("この図形は何色ですか？", "What shape is it?"):
        assert model.query(RED_CIRCLE, question) == local_qwen2vl.query(RED_CIRCLE, question)
    assert model.caption(RED_CIRCLE, prompt="Describe this image.") == local_qwen2vl.caption(RED_CIRCLE)


@pytest.mark.timeout(240)
def test_stats_time_the_first_token_from_the_request(served_smolvlm: Served) -> None:
    model = remote(served_smolvlm)
    started = time.perf_counter()
    _, stream = streamed(model.caption(RED_CIRCLE, stream=True, max_new_tokens=3))
    waited = time.perf_counter() - started
    stats = stream.stats
    assert stats.finish_reason == "length"
    assert stats.tokens == 3
    assert stats.time_to_first_token is not None and 0 < stats.time_to_first_token <= stats.token_times[-1]
    assert stats.end_time is not None and stats.token_times[-1] <= stats.end_time <= waited


@pytest.mark.timeout(240)
def test_the_name_form_works_in_the_registry_and_in_a_widget(served_smolvlm: Served, shapes_smolvlm: SmolVLM) -> None:
    name = f"remote:{served_smolvlm.model}@{served_smolvlm.base_url}"
    model = registry.get_model(name)
    assert isinstance(model, RemoteVLM) and model.name == name
    assert (model.model_id, model.base_url) == (served_smolvlm.model, served_smolvlm.base_url)
    widget = VLMWidget(model, image=RED_CIRCLE)
    assert widget.run()
    widget.wait(60)
    assert widget.text == shapes_smolvlm.caption(RED_CIRCLE)
    widget.close()


@pytest.mark.timeout(240)
def test_the_command_line_batch_captions_through_the_server_several_at_a_time(
    served_smolvlm: Served, shapes_smolvlm: SmolVLM, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "captions.jsonl"
    name = f"remote:{served_smolvlm.model}@{served_smolvlm.base_url}"
    argv = ["batch", str(ASSETS), "--out", str(out), "--model", name, "--concurrency", "3"]
    assert main(argv) == 0
    assert "4 of 4 pictures captioned" in capsys.readouterr().err
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert {record["image"]: record["caption"] for record in records} == {
        str(path.resolve()): shapes_smolvlm.caption(path) for path in PICTURES
    }
    assert {record["model"] for record in records} == {name}


# Faults ------------------------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_no_server_listening_is_a_clear_error_at_once() -> None:
    # The port stays bound, without listening, for the whole test: connections to it are refused,
    # and no other process can start listening on it meanwhile (as it could on a port freed at once).
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        base_url = f"http://127.0.0.1:{bound.getsockname()[1]}/v1"
        model = RemoteVLM(base_url=base_url, model="any")
        started = time.monotonic()
        with pytest.raises(RemoteError, match=r"Cannot connect to the model server at .*start the server"):
            model.load()
        with pytest.raises(RemoteError, match="Cannot connect"):
            model.caption(RED_CIRCLE)
        assert time.monotonic() - started < 5


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("status", "body", "shown"),
    [
        (500, {"error": {"message": "CUDA out of memory", "type": "server_error"}}, "CUDA out of memory"),
        (400, {"detail": "Unexpected fields in the request: {'x'}"}, "Unexpected fields in the request"),
        (404, {"error": "model 'nope' not found"}, "model 'nope' not found.*base_url"),
    ],
)
def test_an_http_error_shows_the_servers_own_message(status: int, body: dict[str, object], shown: str) -> None:
    with tiny_server(lambda handler: handler.send_json(status, body)) as server:
        model = RemoteVLM(base_url=server.base_url, model="any")
        with pytest.raises(RemoteError, match=f"answered {status} .*{shown}") as caught:
            model.caption(RED_CIRCLE, stream=True).wait(10)
    assert caught.value.status_code == status


def malformed(handler: Handler) -> None:
    handler.start_events()
    handler.send_event(chunk("Hello"))
    handler.send_event("this is not json")


def no_choices(handler: Handler) -> None:
    handler.start_events()
    handler.send_event(json.dumps({"object": "chat.completion.chunk", "text": "Hello"}))


def error_event(handler: Handler) -> None:
    handler.start_events()
    handler.send_event(chunk("Hello"))
    handler.send_event(json.dumps({"error": "generation failed: index out of range"}))


def not_a_stream(handler: Handler) -> None:
    handler.send_json(200, {"choices": [{"message": {"content": "Hello"}}]})


def early_end(handler: Handler) -> None:
    handler.start_events()
    handler.send_event(chunk("Hello"))


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("behaviour", "message"),
    [
        (malformed, "not a JSON object: 'this is not json'"),
        (no_choices, "not a chat-completion chunk"),
        (error_event, "reported an error during the answer: generation failed: index out of range"),
        (not_a_stream, "did not answer with a stream of events"),
        (early_end, "ended the answer early, after 1 tokens"),
    ],
    ids=lambda value: getattr(value, "__name__", "message"),
)
def test_events_that_are_not_the_api_end_the_stream_with_a_clear_error(behaviour: Behaviour, message: str) -> None:
    with tiny_server(behaviour) as server:
        stream = RemoteVLM(base_url=server.base_url, model="any").caption(RED_CIRCLE, stream=True)
        received: list[str] = []
        with pytest.raises(RemoteError, match=message):
            for piece in stream:
                received.append(piece)
    assert stream.stats.finish_reason == "error"
    assert received in ([], ["Hello"]), "what came before the fault was delivered"


def stall_with_keepalives(handler: Handler) -> None:
    """Headers, the role chunk and keep-alive comments, but never a token (a server stuck in prefill)."""
    handler.start_events()
    handler.wfile.write(b'data: {"choices": [{"index": 0, "delta": {"role": "assistant"}}]}\n\n')
    for _ in range(100):
        try:
            handler.wfile.write(b": keep-alive\n\n")
            handler.wfile.flush()
        except OSError:
            handler.record.hung_up.set()
            return
        time.sleep(0.1)


def stall_silently(handler: Handler) -> None:
    """Not even the headers: a server that accepted the request and went quiet."""
    handler.wait_for_hang_up(10)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("behaviour", [stall_with_keepalives, stall_silently], ids=lambda f: f.__name__)
def test_no_first_token_in_time_is_a_timeout_error_and_the_connection_is_closed(behaviour: Behaviour) -> None:
    with tiny_server(behaviour) as server:
        model = RemoteVLM(base_url=server.base_url, model="any", timeout=1.0)
        started = time.monotonic()
        with pytest.raises(RemoteTimeoutError, match=r"no first token within 1 s|went silent"):
            model.caption(RED_CIRCLE)
        assert time.monotonic() - started < 4
        assert server.hung_up.wait(5), "the client must close the connection it gave up on"


def one_token_then_wait(handler: Handler) -> None:
    handler.start_events()
    handler.send_event(chunk("Hello"))
    handler.wait_for_hang_up(20)


@pytest.mark.timeout(30)
def test_cancel_closes_the_connection_at_once() -> None:
    with tiny_server(one_token_then_wait) as server:
        stream = RemoteVLM(base_url=server.base_url, model="any").caption(RED_CIRCLE, stream=True)
        assert next(stream) == "Hello"
        started = time.monotonic()
        stream.cancel()
        assert server.hung_up.wait(3), "the server must see the connection closed"
        stream.close()
        assert time.monotonic() - started < 3
    assert stream.stats.finish_reason == "cancelled"
    assert list(stream) == []


@pytest.mark.timeout(30)
def test_cancel_while_the_server_has_not_answered_yet_closes_the_connection() -> None:
    received = threading.Event()

    def note_and_stall(handler: Handler) -> None:
        received.set()
        stall_silently(handler)

    with tiny_server(note_and_stall) as server:
        stream = RemoteVLM(base_url=server.base_url, model="any").caption(RED_CIRCLE, stream=True)
        # Not a sleep: on a loaded machine the request may not be sent yet when the sleep ends.
        assert received.wait(10), "the request is sent; the server says nothing"
        stream.cancel()
        assert server.hung_up.wait(3)
        stream.close()
    assert stream.stats.finish_reason == "cancelled"


@pytest.mark.timeout(200)
def test_a_server_killed_mid_answer_ends_the_stream_with_an_error_fast(tmp_path: Path) -> None:
    checkpoint = tmp_path / "random-smolvlm"
    checkpoint.mkdir()
    random_weights_copy("shapes-smolvlm", checkpoint)  # answers run to max_new_tokens: a long stream
    with transformers_serve(checkpoint, tmp_path) as served:
        stream = remote(served).caption(RED_CIRCLE, stream=True, max_new_tokens=5000)
        for _ in range(20):
            next(stream)
        served.process.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        with pytest.raises(RemoteError, match=r"lost after \d+ tokens|ended the answer early"):
            for _ in stream:
                pass
        assert time.monotonic() - killed < 5
    assert 20 <= stream.stats.tokens < 5000


def fail_once(handler: Handler) -> None:
    if len(handler.record.requests) == 1:
        handler.send_json(503, {"error": {"message": "busy, try later"}})
    else:
        handler.start_events()
        handler.send_event(chunk(" Hello"))
        handler.send_event(chunk(" world", finish_reason="stop"))


@pytest.mark.timeout(30)
def test_the_model_keeps_working_after_a_failed_request() -> None:
    with tiny_server(fail_once) as server:
        model = RemoteVLM(base_url=server.base_url, model="any")
        with pytest.raises(RemoteError, match="busy, try later"):
            model.caption(RED_CIRCLE)
        assert model.caption(RED_CIRCLE) == "Hello world", "leading white space dropped, as locally"


def hello(handler: Handler) -> None:
    handler.start_events()
    handler.send_event(chunk("Hello"))
    handler.send_event(chunk(" world", finish_reason="stop"))


@pytest.mark.timeout(60)
def test_the_magics_take_the_remote_name_form(capsys: pytest.CaptureFixture[str]) -> None:
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    try:
        shell.run_line_magic("load_ext", "vlm_notebook")
        with tiny_server(hello) as server:
            name = f"remote:some/model@{server.base_url}"
            answer = shell.run_line_magic("vlm_caption", f"{RED_CIRCLE} --model {name} --language ja")
            body = server.requests[-1]["body"]
        assert answer == "Hello world" and "Hello world" in capsys.readouterr().out
        assert isinstance(body, dict) and body["model"] == "some/model"
        assert body["messages"][0]["content"][1]["text"] == "この画像を説明してください。"
    finally:
        InteractiveShell.clear_instance()


# The request and the API key ----------------------------------------------------------------------------


def echo_key_unauthorised(handler: Handler) -> None:
    key = handler.headers.get("Authorization", "").removeprefix("Bearer ")
    handler.send_json(401, {"error": {"message": f"Incorrect API key provided: {key}"}})


@pytest.mark.timeout(30)
def test_the_api_key_is_sent_but_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "sk-test-0123456789abcdef"
    monkeypatch.setenv("VLM_NOTEBOOK_API_KEY", secret)
    with tiny_server(echo_key_unauthorised) as server:
        model = RemoteVLM(base_url=server.base_url, model="any")
        assert secret not in repr(model) and secret not in model.name
        with pytest.raises(RemoteError) as caught:
            model.caption(RED_CIRCLE)
        headers = server.requests[-1]["headers"]
    assert isinstance(headers, dict) and headers["Authorization"] == f"Bearer {secret}"
    assert "401" in str(caught.value) and "API key" in str(caught.value)
    assert secret not in str(caught.value) and "***" in str(caught.value)


@pytest.mark.timeout(30)
def test_the_request_carries_the_picture_the_prompt_and_the_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VLM_NOTEBOOK_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with tiny_server(fail_once) as server:
        model = RemoteVLM(base_url=server.base_url, model="org/vlm")
        model.load()
        with pytest.raises(RemoteError):
            model.query(RED_CIRCLE, "  What colour?  ", max_new_tokens=7, temperature=0.5, seed=3)
        body = server.requests[-1]["body"]
        headers = server.requests[-1]["headers"]
    assert isinstance(body, dict) and isinstance(headers, dict)
    assert "Authorization" not in headers
    assert server.requests[-1]["path"] == "/v1/chat/completions"
    image, text = body["messages"][0]["content"]
    assert image["image_url"]["url"].startswith("data:image/png;base64,iVBOR")
    assert text == {"type": "text", "text": "What colour?"}
    assert (body["model"], body["stream"], body["max_tokens"], body["temperature"], body["seed"]) == (
        "org/vlm", True, 7, 0.5, 3
    )


@pytest.mark.timeout(30)
def test_a_huge_seed_and_a_tiny_temperature_reach_the_server_as_values_it_takes() -> None:
    with tiny_server(fail_once) as server:
        model = RemoteVLM(base_url=server.base_url, model="org/vlm")
        with pytest.raises(RemoteError):
            model.query(RED_CIRCLE, "What colour?", temperature=1e-38, seed=2**70 + 5)
        body = server.requests[-1]["body"]
    assert isinstance(body, dict)
    assert body["temperature"] == 0.0  # greedy, as the local models decode it
    assert 0 <= body["seed"] < 2**63 and body["seed"] == (2**70 + 5) % 2**63


def test_bad_arguments_are_refused_with_what_to_write() -> None:
    with pytest.raises(RequestError, match="http:// or https://"):
        RemoteVLM(base_url="localhost:8000/v1", model="m")
    with pytest.raises(RequestError, match="model's name"):
        RemoteVLM(base_url="http://localhost:8000/v1", model=" ")
    with pytest.raises(RequestError, match="timeout"):
        RemoteVLM(base_url="http://localhost:8000/v1", model="m", timeout=0)
    with pytest.raises(UnknownModelError, match=r"remote:<model>@<base_url>"):
        registry.get_model("remote:no-url-here")
    with pytest.raises(RequestError, match="not both"):
        RemoteVLM(base_url="http://localhost:8000/v1", model="m").caption(RED_CIRCLE, prompt="x", language="ja")


def test_a_model_name_with_at_signs_keeps_them() -> None:
    model = RemoteVLM("remote:/models/shapes@main@http://127.0.0.1:9/v1/")
    assert (model.model_id, model.base_url) == ("/models/shapes@main", "http://127.0.0.1:9/v1")
    with_password = registry.parse_remote_name("remote:m@main@https://user:p@ss@host:8000/v1")
    assert with_password == ("m@main", "https://user:p@ss@host:8000/v1"), "the URL's own '@' stays in the URL"
