"""Faults of model servers and of batches against them (issue #21), on tiny servers on 127.0.0.1.

Each fault ends fast with the project's own error, or is handled as the case in
``reliability_cases.py`` says; after it, the same ``RemoteVLM`` answers the next request.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from email.utils import formatdate
from pathlib import Path
from typing import Any

import pytest
from reliability_cases import covers
from remote_fixtures import Behaviour, Handler, chunk, tiny_server

from vlm_notebook import shapes
from vlm_notebook.batch import (
    ATTEMPTS,
    FAILURES_IN_A_ROW,
    MAX_CONCURRENCY,
    caption_batch,
    read_results,
    retry_wait,
)
from vlm_notebook.cli import main
from vlm_notebook.errors import RemoteError, RemoteTimeoutError, RemoteUnavailableError, RequestError
from vlm_notebook.models.remote import RemoteVLM
from vlm_notebook.stream import TextStream

SECRET = "sk-test-0123456789abcdef"
ASSETS = Path(__file__).parents[1] / "vlm_notebook" / "assets"
RED_CIRCLE = ASSETS / "red-circle-on-white.png"


def answer_hello(handler: Handler) -> None:
    handler.start_events()
    handler.send_event(chunk("Hello"))
    handler.send_event(chunk(" world", finish_reason="stop"))
    handler.send_event("[DONE]")


def first_then_hello(fault: Behaviour) -> Behaviour:
    """``fault`` for the first request, a good answer for every later one."""

    def behaviour(handler: Handler) -> None:
        (fault if len(handler.record.requests) == 1 else answer_hello)(handler)

    return behaviour


def assert_still_answers(model: RemoteVLM) -> None:
    assert model.caption(RED_CIRCLE) == "Hello world", "after the fault the same model answers the next request"


def write_until_hang_up(handler: Handler, pieces: Iterator[bytes], pause: float) -> int:
    """Write ``pieces`` one by one until the client hangs up (noted) or they run out; how many were sent."""
    sent = 0
    for piece in pieces:
        try:
            handler.wfile.write(piece)
            handler.wfile.flush()
        except OSError:
            handler.record.hung_up.set()
            break
        sent += 1
        time.sleep(pause)
    return sent


def consume(stream: str | TextStream) -> list[str]:
    assert isinstance(stream, TextStream)
    received: list[str] = []
    with stream:
        for piece in stream:
            received.append(piece)
    return received


# The API key ---------------------------------------------------------------------------------------


def token_of(handler: Handler) -> str:
    return handler.headers.get("Authorization", "")  # "Bearer sk-..."


def key_in_http_error(handler: Handler) -> None:
    handler.send_json(500, {"error": {"message": f"upstream refused {token_of(handler)}"}})


def key_in_error_event(handler: Handler) -> None:
    handler.start_events()
    handler.send_event(chunk("Hello"))
    handler.send_event(json.dumps({"error": {"message": f"generation failed for {token_of(handler)}"}}))


def key_in_odd_chunk(handler: Handler) -> None:
    handler.start_events()
    handler.send_event(json.dumps({"object": "debug", "headers": {"authorization": token_of(handler)}}))


def key_in_event_that_is_not_json(handler: Handler) -> None:
    handler.start_events()
    handler.send_event(f"auth={token_of(handler)} failed")


@pytest.mark.timeout(60)
@covers("key-in-server-text")
@pytest.mark.parametrize(
    "fault",
    [key_in_http_error, key_in_error_event, key_in_odd_chunk, key_in_event_that_is_not_json],
    ids=lambda f: f.__name__,
)
def test_the_api_key_a_server_echoes_never_reaches_an_error(fault: Behaviour) -> None:
    with tiny_server(first_then_hello(fault)) as server:
        model = RemoteVLM(base_url=server.base_url, model="any", api_key=SECRET)
        with pytest.raises(RemoteError) as caught:
            model.caption(RED_CIRCLE)
        assert_still_answers(model)
    message = str(caught.value)
    assert SECRET not in message and "***" in message, message
    assert SECRET not in repr(caught.value.args)


@pytest.mark.timeout(30)
@covers("key-in-server-text")
def test_any_bearer_token_a_server_shows_is_blanked_out_too() -> None:
    def other_token(handler: Handler) -> None:
        handler.send_json(401, {"error": "token 'Bearer eyJhbGciOi.other-token' has expired"})

    with tiny_server(other_token) as server:
        model = RemoteVLM(base_url=server.base_url, model="any", api_key=SECRET)
        with pytest.raises(RemoteError, match=r"Bearer \*\*\*' has expired.*Check the API key") as caught:
            model.caption(RED_CIRCLE)
    assert "eyJhbGciOi" not in str(caught.value)


# Time between tokens -----------------------------------------------------------------------------


def keep_alive_comments(handler: Handler) -> None:
    handler.start_events()
    handler.send_event(chunk("Hello"))
    write_until_hang_up(handler, (b": keep-alive\n\n" for _ in range(200)), 0.05)


def empty_chunks(handler: Handler) -> None:
    handler.start_events()
    handler.send_event(chunk("Hello"))
    empty = [chunk(None), chunk("")]
    write_until_hang_up(handler, (f"data: {empty[n % 2]}\n\n".encode() for n in range(200)), 0.05)


@pytest.mark.timeout(60)
@covers("keep-alive-after-first-token")
@pytest.mark.parametrize("fault", [keep_alive_comments, empty_chunks], ids=lambda f: f.__name__)
def test_keep_alives_after_the_first_token_do_not_stop_the_timeout(fault: Behaviour) -> None:
    with tiny_server(first_then_hello(fault)) as server:
        model = RemoteVLM(base_url=server.base_url, model="any", timeout=1.0)
        stream = model.caption(RED_CIRCLE, stream=True)
        received: list[str] = []
        started = time.monotonic()
        with pytest.raises(RemoteTimeoutError, match=r"no more of the answer after 1 tokens within 1 s"):
            for piece in stream:
                received.append(piece)
        assert time.monotonic() - started < 4, "timed from the last token, not from the last byte"
        assert server.hung_up.wait(5), "the connection it gave up on is closed"
        assert received == ["Hello"] and stream.stats.finish_reason == "error"
        assert_still_answers(model)


@pytest.mark.timeout(60)
@covers("keep-alive-after-first-token")
def test_a_slow_answer_that_keeps_sending_tokens_is_not_cut() -> None:
    def slow_tokens(handler: Handler) -> None:
        handler.start_events()
        for _ in range(12):  # 3 s in all, longer than the timeout, but 0.25 s between tokens
            handler.send_event(chunk("la"))
            time.sleep(0.25)
        handler.send_event(chunk(None, finish_reason="stop"))

    with tiny_server(slow_tokens) as server:
        model = RemoteVLM(base_url=server.base_url, model="any", timeout=2.0)
        assert model.caption(RED_CIRCLE) == "la" * 12


# max_new_tokens ----------------------------------------------------------------------------------


@pytest.mark.timeout(60)
@covers("server-ignores-max-tokens")
def test_a_server_that_ignores_max_tokens_is_cut_off_at_the_bound() -> None:
    sent: list[int] = []

    def two_thousand_tokens(handler: Handler) -> None:
        handler.start_events()
        sent.append(write_until_hang_up(handler, (f"data: {chunk('tok')}\n\n".encode() for _ in range(2001)), 0.005))

    with tiny_server(first_then_hello(two_thousand_tokens)) as server:
        model = RemoteVLM(base_url=server.base_url, model="any")
        started = time.monotonic()
        stream = model.caption(RED_CIRCLE, stream=True, max_new_tokens=5)
        assert consume(stream) == ["tok"] * 5
        assert time.monotonic() - started < 5
        assert server.hung_up.wait(5), "the connection is closed at the bound"
        body = server.requests[0]["body"]
        assert isinstance(body, dict) and body["max_tokens"] == 5
        assert_still_answers(model)
    assert stream.stats.tokens == 5 and stream.stats.finish_reason == "length"
    assert sent and sent[0] < 2001, "the server was stopped, not read to its end"


@pytest.mark.timeout(60)
@covers("server-ignores-max-tokens")
def test_a_server_that_stops_at_the_bound_itself_keeps_its_finish_and_usage() -> None:
    def five_then_usage(handler: Handler) -> None:
        handler.start_events()
        for _ in range(5):
            handler.send_event(chunk("tok"))
        handler.send_event(chunk(None, finish_reason="length"))
        handler.send_event(json.dumps({"choices": [], "usage": {"prompt_tokens": 42, "completion_tokens": 5}}))
        handler.send_event("[DONE]")

    def five_then_silence(handler: Handler) -> None:
        handler.start_events()
        for _ in range(5):
            handler.send_event(chunk("tok"))
        handler.wait_for_hang_up(20)

    with tiny_server(five_then_usage) as server:
        stream = RemoteVLM(base_url=server.base_url, model="any").caption(RED_CIRCLE, stream=True, max_new_tokens=5)
        assert consume(stream) == ["tok"] * 5
    assert (stream.stats.finish_reason, stream.stats.prompt_tokens) == ("length", 42)
    with tiny_server(five_then_silence) as server:
        model = RemoteVLM(base_url=server.base_url, model="any", timeout=30.0)
        started = time.monotonic()
        stream = model.caption(RED_CIRCLE, stream=True, max_new_tokens=5)
        assert consume(stream) == ["tok"] * 5, "complete at the bound: no error, and no wait for the timeout"
        assert time.monotonic() - started < 6
        assert server.hung_up.wait(5)
    assert stream.stats.finish_reason == "length"


# Base URLs, bytes and sizes ----------------------------------------------------------------------------


@covers("bad-base-url")
@pytest.mark.parametrize(
    ("base_url", "message"),
    [
        ("http://gpu-box:abc/v1", "is not a URL"),
        ("http://gpu-box:99999/v1", "port from 1 to 65535"),
        ("http://", "needs a host"),
        ("http:///v1", "needs a host"),
        ("http://gpu-box:8000/v1?key=x", "without '\\?...' or '#...'"),
        ("http://gpu-box:8000/v1#models", "without '\\?...' or '#...'"),
        ("http://me:hunter2@gpu-box:8000/v1", "user name or password.*api_key="),
        ("gpu-box:8000/v1", "starting with http:// or https://"),
    ],
)
def test_bad_base_urls_are_refused_with_how_to_write_them(base_url: str, message: str) -> None:
    with pytest.raises(RequestError, match=message) as caught:
        RemoteVLM(base_url=base_url, model="m")
    assert "hunter2" not in str(caught.value)


def raw_events(*events: bytes) -> Behaviour:
    def behaviour(handler: Handler) -> None:
        handler.start_events()
        for event in events:
            handler.wfile.write(b"data: " + event + b"\n\n")
        handler.wfile.flush()

    return behaviour


def content_event(escaped_text: str, finish_reason: str | None = None) -> bytes:
    """A chunk whose content is written as given (JSON escapes included), not re-encoded."""
    reason = json.dumps(finish_reason)
    return ('{"choices": [{"index": 0, "delta": {"content": "' + escaped_text + '"}, "finish_reason": '
            + reason + "}]}").encode()


@pytest.mark.timeout(60)
@covers("invalid-text")
def test_invalid_utf8_and_broken_surrogates_become_replacement_characters(tmp_path: Path) -> None:
    events = raw_events(
        content_event("A"),
        b'{"choices": [{"index": 0, "delta": {"content": " bad \xff\xfe bytes"}, "finish_reason": null}]}',
        content_event(" smile \\ud83d"),  # an emoji split in two escaped halves, across chunks
        content_event("\\ude00 lone \\udc00 half"),
        content_event(".", finish_reason="stop"),
    )
    with tiny_server(events) as server:
        model = RemoteVLM(base_url=server.base_url, model="any")
        assert model.caption(RED_CIRCLE) == "A bad \ufffd\ufffd bytes smile \U0001f600 lone \ufffd half."
        report = caption_batch(model, [RED_CIRCLE], tmp_path / "out.jsonl", progress=False)
    assert report.captioned == 1, "the batch writes the caption (a lone half could not be written)"
    assert read_results(tmp_path / "out.jsonl")[str(RED_CIRCLE.resolve())]["caption"].endswith("lone \ufffd half.")


def endless_line(handler: Handler) -> None:
    handler.start_events()
    write_until_hang_up(handler, iter([b"data: "] + [b"x" * 65536] * 200), 0)


def one_huge_event(handler: Handler) -> None:
    handler.start_events()
    line = b"data: " + b"y" * 100 + b"\n"
    write_until_hang_up(handler, iter([line] * 200000 + [b"\n"]), 0)  # more than the sockets' buffers hold


@pytest.mark.timeout(60)
@covers("huge-event")
@pytest.mark.parametrize("fault", [endless_line, one_huge_event], ids=lambda f: f.__name__)
def test_an_event_larger_than_a_mebibyte_is_refused_before_it_fills_memory(fault: Behaviour) -> None:
    with tiny_server(first_then_hello(fault)) as server:
        model = RemoteVLM(base_url=server.base_url, model="any")
        started = time.monotonic()
        with pytest.raises(RemoteError, match=r"an event of more than 1,048,576 characters"):
            model.caption(RED_CIRCLE)
        assert time.monotonic() - started < 10
        assert server.hung_up.wait(5), "the rest is not read"
        assert_still_answers(model)


@pytest.mark.timeout(60)
@covers("huge-event")
def test_a_huge_error_body_is_read_only_in_part_and_clipped() -> None:
    def huge_error(handler: Handler) -> None:
        body = json.dumps({"error": {"message": "z" * (20 << 20)}}).encode()
        handler.send_response(500)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        write_until_hang_up(handler, (body[i:i + 65536] for i in range(0, len(body), 65536)), 0)

    with tiny_server(first_then_hello(huge_error)) as server:
        model = RemoteVLM(base_url=server.base_url, model="any")
        with pytest.raises(RemoteError, match="answered 500") as caught:
            model.caption(RED_CIRCLE)
        assert len(str(caught.value)) < 1000
        assert server.hung_up.wait(5), "the body was not read to its end"
        assert_still_answers(model)


@pytest.mark.timeout(30)
@covers("odd-answers")
def test_a_redirect_is_refused_with_the_address_to_use() -> None:
    def moved(handler: Handler) -> None:
        handler.send_response(307)
        handler.send_header("Location", "https://gpu-box.example/v1/chat/completions")
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    with tiny_server(first_then_hello(moved)) as server:
        model = RemoteVLM(base_url=server.base_url, model="any")
        with pytest.raises(RemoteError, match=r"answered 307, sending the request to https://gpu-box.example/v1/"
                                              r"chat/completions: if that is the server, use it as base_url"):
            model.caption(RED_CIRCLE)
        assert len(server.requests) == 1, "not followed"
        assert_still_answers(model)


@pytest.mark.timeout(30)
@covers("odd-answers")
def test_chunks_that_carry_a_null_error_field_are_read_as_the_answer() -> None:
    def null_errors(handler: Handler) -> None:
        handler.start_events()
        for text, reason in (("Hello", None), (" world", "stop")):
            payload = json.loads(chunk(text, finish_reason=reason))
            handler.send_event(json.dumps({**payload, "error": None}))

    with tiny_server(null_errors) as server:
        assert RemoteVLM(base_url=server.base_url, model="any").caption(RED_CIRCLE) == "Hello world"


# Batches against a failing server ------------------------------------------------------------------


def draw_pictures(folder: Path, count: int) -> list[Path]:
    folder.mkdir(exist_ok=True)
    paths = []
    for number, scene in enumerate(shapes.all_scenes()[:count]):
        path = folder / f"{number:03d}-{scene.colour}-{scene.shape}.png"
        shapes.draw(scene).image.save(path)
        paths.append(path.resolve())
    return paths


class PerPicture:
    """A server that answers each picture's tries in turn: ``plan(index, try)`` picks the behaviour."""

    def __init__(self, plan: Callable[[int, int], Behaviour]):
        self.plan = plan
        self.lock = threading.Lock()
        self.pictures: dict[str, int] = {}  # the picture's data URL -> its index
        self.tries: dict[int, list[float]] = {}  # index -> when each try came

    def __call__(self, handler: Handler) -> None:
        body = handler.body
        assert isinstance(body, dict)
        url = body["messages"][0]["content"][0]["image_url"]["url"]
        with self.lock:
            index = self.pictures.setdefault(url, len(self.pictures))
            times = self.tries.setdefault(index, [])
            times.append(time.monotonic())
            attempt = len(times)
        self.plan(index, attempt)(handler)


def busy(retry_after: str = "0", status: int = 503) -> Behaviour:
    def behaviour(handler: Handler) -> None:
        data = json.dumps({"error": {"message": "busy, try later"}}).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Retry-After", retry_after)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    return behaviour


def hang_up_at_once(handler: Handler) -> None:
    handler.close_connection = True  # no answer at all: the connection is dropped


def hang_up_mid_answer(handler: Handler) -> None:
    handler.start_events()
    handler.send_event(chunk("A"))


def caption(handler: Handler) -> None:
    handler.start_events()
    handler.send_event(chunk("A shape.", finish_reason="stop"))


def lines_of(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


@pytest.mark.timeout(60)
@covers("batch-transient-failures")
def test_busy_failing_and_dropped_requests_are_tried_again_and_every_caption_kept(tmp_path: Path) -> None:
    faults = [busy("0", 503), busy("0", 429), hang_up_at_once, hang_up_mid_answer, busy("0", 502)]
    server_plan = PerPicture(lambda index, attempt: faults[index % 5] if attempt == 1 else caption)
    paths = draw_pictures(tmp_path / "pictures", 10)
    out = tmp_path / "out.jsonl"
    with tiny_server(server_plan) as server:
        model = RemoteVLM(base_url=server.base_url, model="any")
        report = caption_batch(model, paths, out, concurrency=3, progress=False)
    assert (report.captioned, report.failed, report.retries) == (10, {}, 10)
    assert sorted(record["image"] for record in lines_of(out)) == sorted(map(str, paths)), "each once"
    assert {record["caption"] for record in lines_of(out)} == {"A shape."}
    assert "10 retries" in report.summary()


@pytest.mark.timeout(60)
@covers("batch-transient-failures")
def test_retry_after_is_honoured_and_capped() -> None:
    server_plan = PerPicture(lambda index, attempt: busy("1") if attempt == 1 else caption)
    with tiny_server(server_plan) as server:
        model = RemoteVLM(base_url=server.base_url, model="any")
        with pytest.raises(RemoteUnavailableError, match="answered 503") as caught:
            model.caption(RED_CIRCLE)
        assert caught.value.retry_after == 1.0 and caught.value.status_code == 503
    assert retry_wait(1, 86400.0) == 30.0, "a server asking for a day waits 30 s"
    assert retry_wait(1, 0.0) == 0.0
    assert 1.0 <= retry_wait(1, None) <= 1.25 and 2.0 <= retry_wait(2, None) <= 2.5
    assert retry_wait(20, None) == 30.0


@pytest.mark.timeout(60)
@covers("batch-transient-failures")
def test_a_retry_after_date_and_a_garbled_one_are_read_as_they_should_be(tmp_path: Path) -> None:
    in_ten_seconds = formatdate(time.time() + 10, usegmt=True)
    for header, expected in ((in_ten_seconds, (7.0, 10.0)), ("soon", None), ("-3", None), ("nan", None)):
        with tiny_server(busy(header)) as server, pytest.raises(RemoteUnavailableError) as caught:
            RemoteVLM(base_url=server.base_url, model="any").caption(RED_CIRCLE)
        seconds = caught.value.retry_after
        if expected is None:
            assert seconds is None, header
        else:
            assert seconds is not None and expected[0] <= seconds <= expected[1], header
    server_plan = PerPicture(lambda index, attempt: busy("1") if attempt == 1 else caption)
    with tiny_server(server_plan) as server:
        model = RemoteVLM(base_url=server.base_url, model="any")
        report = caption_batch(model, [RED_CIRCLE], tmp_path / "out.jsonl", progress=False)
    first, second = server_plan.tries[0]
    assert report.captioned == 1 and second - first >= 1.0, "the batch waited the second the server asked for"


@pytest.mark.timeout(60)
@covers("batch-transient-failures")
def test_a_picture_still_failing_after_its_tries_is_reported_and_the_others_kept(tmp_path: Path) -> None:
    server_plan = PerPicture(lambda index, attempt: busy("0") if index == 1 else caption)
    paths = draw_pictures(tmp_path / "pictures", 4)
    out = tmp_path / "out.jsonl"
    with tiny_server(server_plan) as server:
        model = RemoteVLM(base_url=server.base_url, model="any")
        report = caption_batch(model, paths, out, concurrency=1, progress=False)
    assert report.captioned == 3 and list(report.failed) == [str(paths[1])]
    assert "503" in report.failed[str(paths[1])] and "busy, try later" in report.failed[str(paths[1])]
    assert len(server_plan.tries[1]) == ATTEMPTS and report.retries == ATTEMPTS - 1
    assert sorted(record["image"] for record in lines_of(out)) == sorted(str(p) for p in paths if p != paths[1])


@pytest.mark.timeout(60)
@covers("batch-transient-failures")
def test_a_server_down_for_good_ends_the_run_after_five_failures_in_a_row(tmp_path: Path) -> None:
    server_plan = PerPicture(lambda index, attempt: caption if index == 0 else busy("0"))
    paths = draw_pictures(tmp_path / "pictures", 12)
    out = tmp_path / "out.jsonl"
    with tiny_server(server_plan) as server:
        model = RemoteVLM(base_url=server.base_url, model="any")
        with pytest.raises(RemoteError, match=rf"{FAILURES_IN_A_ROW} pictures in a row failed.*run the batch again"):
            caption_batch(model, paths, out, concurrency=2, progress=False)
    assert len(lines_of(out)) == 1, "the caption finished before is kept"
    assert len(server_plan.tries) < 12, "the run stopped, not every picture was tried"


@pytest.mark.timeout(60)
@covers("batch-transient-failures")
def test_captions_finished_alongside_an_error_that_ends_the_run_are_kept(tmp_path: Path) -> None:
    arrived = threading.Barrier(3, timeout=10)
    answered = threading.Semaphore(0)

    def refused(handler: Handler) -> None:
        for _ in range(2):  # the two captions are sent first (and a moment to read them): then the error
            answered.acquire(timeout=10)
        time.sleep(0.5)
        handler.send_json(400, {"error": {"message": "unsupported image"}})

    def answered_caption(handler: Handler) -> None:
        caption(handler)
        handler.wfile.flush()
        answered.release()

    def together(index: int, attempt: int) -> Behaviour:
        def behaviour(handler: Handler) -> None:
            arrived.wait()  # three requests in flight at once: one error, two captions
            (refused if index == 0 else answered_caption)(handler)

        return behaviour

    paths = draw_pictures(tmp_path / "pictures", 3)
    out = tmp_path / "out.jsonl"
    with tiny_server(PerPicture(together)) as server:
        model = RemoteVLM(base_url=server.base_url, model="any")
        with pytest.raises(RemoteError, match=r"answered 400.*unsupported image"):
            caption_batch(model, paths, out, concurrency=3, progress=False)
    assert len(lines_of(out)) == 2, "both captions finished before the error are written"


# The output file ---------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
@covers("batch-same-file-twice")
def test_a_second_run_on_the_same_file_is_refused_while_the_first_writes(tmp_path: Path) -> None:
    release = threading.Event()
    answering = threading.Event()

    def held_caption(handler: Handler) -> None:
        answering.set()
        release.wait(20)
        caption(handler)

    paths = draw_pictures(tmp_path / "pictures", 4)
    out = tmp_path / "out.jsonl"
    reports: list[Any] = []
    with tiny_server(held_caption) as server:
        model = RemoteVLM(base_url=server.base_url, model="any")
        first = threading.Thread(target=lambda: reports.append(caption_batch(model, paths, out, progress=False)))
        first.start()
        try:
            assert answering.wait(10)
            started = time.monotonic()
            with pytest.raises(RequestError, match=rf"Another batch is writing to '{out}'.*another file"):
                caption_batch(model, paths, out, progress=False)
            assert time.monotonic() - started < 2, "refused at once, not after waiting"
        finally:
            release.set()
            first.join(30)
        again = caption_batch(model, paths, out, progress=False)
    assert reports and reports[0].captioned == 4
    assert (again.done_before, again.captioned) == (4, 0), "once the first ended, the file is free again"
    assert sorted(record["image"] for record in lines_of(out)) == sorted(map(str, paths)), "each picture once"


def closed_port_model() -> tuple[RemoteVLM, socket.socket]:
    """A model whose server is down: any work on it (loading it) fails with RemoteError."""
    bound = socket.socket()
    bound.bind(("127.0.0.1", 0))
    return RemoteVLM(base_url=f"http://127.0.0.1:{bound.getsockname()[1]}/v1", model="any"), bound


@pytest.mark.timeout(60)
@covers("batch-bad-output")
def test_an_output_that_cannot_be_written_is_refused_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, bound = closed_port_model()
    with bound:
        with pytest.raises(RequestError, match=rf"out '{tmp_path}' is a folder: give the file"):
            caption_batch(model, [RED_CIRCLE], tmp_path, progress=False)
        with pytest.raises(RequestError, match="does not exist: create it"):
            caption_batch(model, [RED_CIRCLE], tmp_path / "missing" / "out.jsonl", progress=False)
    with tiny_server(caption) as server:  # the command line loads the model first: a server that answers
        name = f"remote:any@{server.base_url}"
        assert main(["batch", str(RED_CIRCLE), "--out", str(tmp_path), "--model", name]) == 1
        assert server.requests == [], "no picture was sent"
    err = capsys.readouterr().err
    assert f"error: out '{tmp_path}' is a folder" in err and "IsADirectoryError" not in err
    assert not (tmp_path / "missing").exists()


@covers("batch-bad-output")
@pytest.mark.parametrize(
    "content",
    [shapes.draw(shapes.all_scenes()[0]).image.tobytes()[:300] + b"\n\x89PNG", b"notes\nlast line, no newline",
     b"just one line", b'{"image": "/a.png", "caption": "A."}\nnot a record'],
    ids=["picture", "notes", "one-line", "records-then-text"],
)
def test_a_file_a_batch_did_not_write_is_refused_and_left_untouched(tmp_path: Path, content: bytes) -> None:
    out = tmp_path / "photo.png"
    out.write_bytes(content)
    model, bound = closed_port_model()
    with bound, pytest.raises(RequestError, match=r"Line \d+ of .* not a caption record.*another file"):
        caption_batch(model, [RED_CIRCLE], out, progress=False)
    assert out.read_bytes() == content, "not a byte cut (before: its last line was dropped)"


@pytest.mark.timeout(60)
@covers("batch-crash-tail")
@pytest.mark.parametrize(
    "tail", [b'{"image": "/x.png", "capt', b'{"ima', b"\0" * 4096], ids=["record", "start", "zeros"]
)
def test_what_a_crash_left_after_the_last_line_is_dropped_and_captioned_again(tmp_path: Path, tail: bytes) -> None:
    paths = draw_pictures(tmp_path / "pictures", 2)
    out = tmp_path / "out.jsonl"
    with tiny_server(caption) as server:
        model = RemoteVLM(base_url=server.base_url, model="any")
        caption_batch(model, paths[:1], out, progress=False)
        out.write_bytes(out.read_bytes() + tail)
        report = caption_batch(model, paths, out, progress=False)
    assert (report.done_before, report.captioned) == (1, 1)
    assert [record["image"] for record in lines_of(out)] == [str(p) for p in paths]


@pytest.mark.timeout(60)
@covers("batch-concurrency")
@pytest.mark.parametrize("concurrency", [0, -1, True, 2.5, "4", MAX_CONCURRENCY + 1, 10**9])
def test_concurrency_outside_1_to_256_is_refused_before_any_work(tmp_path: Path, concurrency: Any) -> None:
    model, bound = closed_port_model()
    with bound, pytest.raises(RequestError, match="from 1 to 256"):
        caption_batch(model, [RED_CIRCLE], tmp_path / "out.jsonl", concurrency=concurrency, progress=False)
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.timeout(120)
@covers("batch-concurrency")
def test_more_than_a_hundred_requests_can_be_in_flight_at_once(tmp_path: Path) -> None:
    count = 120
    arrived = threading.Barrier(count, timeout=60)

    def all_together(handler: Handler) -> None:
        arrived.wait()  # broken (an error for every request) unless all 120 are in flight at once
        caption(handler)

    (tmp_path / "pictures").mkdir()
    for number in range(count):
        (tmp_path / "pictures" / f"{number:03d}.png").write_bytes(RED_CIRCLE.read_bytes())
    with tiny_server(all_together) as server:
        model = RemoteVLM(base_url=server.base_url, model="any")
        report = caption_batch(model, tmp_path / "pictures", tmp_path / "out.jsonl", concurrency=count,
                               progress=False)
    assert (report.captioned, report.failed, report.retries) == (count, {}, 0)


@pytest.mark.timeout(60)
@covers("batch-bad-picture-once")
def test_the_command_line_reports_a_picture_that_cannot_be_read_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = draw_pictures(tmp_path / "pictures", 2)
    broken = tmp_path / "pictures" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with tiny_server(caption) as server:
        name = f"remote:any@{server.base_url}"
        code = main(["batch", str(tmp_path / "pictures"), "--out", str(tmp_path / "out.jsonl"), "--model", name])
    err = capsys.readouterr().err
    reports = [line for line in err.splitlines() if "broken.png" in line]
    assert code == 1 and len(reports) == 1, err
    assert reports[0].startswith(f"failed: {broken.resolve()}: ") and "2 of 3 pictures captioned" in err
    assert len(lines_of(tmp_path / "out.jsonl")) == len(paths)
