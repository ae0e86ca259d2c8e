"""Batch captioning: one JSON line per picture as it completes, resumable after any interruption.

A run killed with SIGKILL and started again must end with every picture captioned exactly once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from remote_fixtures import Handler, chunk, tiny_server

from vlm_notebook import shapes
from vlm_notebook.batch import caption_batch, list_images, read_results
from vlm_notebook.errors import ImageError, RequestError
from vlm_notebook.models import SmolVLM
from vlm_notebook.models.remote import RemoteVLM


def draw_pictures(folder: Path, count: int) -> list[Path]:
    """``count`` canonical shape pictures, named in caption order, and one file that is not a picture."""
    folder.mkdir(exist_ok=True)
    paths = []
    for number, scene in enumerate(shapes.all_scenes()[:count]):
        path = folder / f"{number:03d}-{scene.colour}-{scene.shape}-on-{scene.background}.png"
        shapes.draw(scene).image.save(path)
        paths.append(path)
    (folder / "notes.txt").write_text("not a picture")
    return paths


def lines_of(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


@pytest.mark.timeout(120)
def test_a_folder_becomes_one_line_per_picture_with_the_models_caption(
    tmp_path: Path, shapes_smolvlm: SmolVLM
) -> None:
    paths = draw_pictures(tmp_path / "pictures", 5)
    out = tmp_path / "captions.jsonl"
    report = caption_batch(shapes_smolvlm, tmp_path / "pictures", out, progress=False)
    assert (report.total, report.done_before, report.captioned, report.failed) == (5, 0, 5, {})
    records = lines_of(out)
    assert [record["image"] for record in records] == [str(path.resolve()) for path in paths], "in folder order"
    for record, path in zip(records, paths, strict=True):
        assert record["caption"] == shapes_smolvlm.caption(path)
        assert record["model"] == "shapes-smolvlm" and record["finish_reason"] == "stop"
        assert isinstance(record["time_to_first_token"], float) and isinstance(record["tokens"], int)


@pytest.mark.timeout(120)
def test_a_second_run_captions_only_what_is_missing(tmp_path: Path, shapes_smolvlm: SmolVLM) -> None:
    paths = draw_pictures(tmp_path / "pictures", 4)
    out = tmp_path / "captions.jsonl"
    caption_batch(shapes_smolvlm, paths[:2], out, progress=False)
    report = caption_batch(shapes_smolvlm, [tmp_path / "pictures"], out, progress=False)
    assert (report.done_before, report.captioned) == (2, 2)
    again = caption_batch(shapes_smolvlm, tmp_path / "pictures", out, progress=False)
    assert (again.done_before, again.captioned) == (4, 0)
    assert sorted(record["image"] for record in lines_of(out)) == sorted(str(p.resolve()) for p in paths)


@pytest.mark.timeout(120)
def test_a_half_written_last_line_is_dropped_and_its_picture_captioned_again(
    tmp_path: Path, shapes_smolvlm: SmolVLM
) -> None:
    paths = draw_pictures(tmp_path / "pictures", 3)
    out = tmp_path / "captions.jsonl"
    caption_batch(shapes_smolvlm, paths[:2], out, progress=False)
    first, second = out.read_bytes().splitlines(keepends=True)
    out.write_bytes(first + second[:25])  # as a kill in the middle of writing the second line leaves it
    assert len(read_results(out)) == 1 and out.read_bytes().endswith(b"\n")
    report = caption_batch(shapes_smolvlm, tmp_path / "pictures", out, progress=False)
    assert (report.done_before, report.captioned) == (1, 2)
    assert sorted(record["image"] for record in lines_of(out)) == sorted(str(p.resolve()) for p in paths)


def test_a_damaged_line_in_the_middle_is_refused_with_what_to_do(tmp_path: Path) -> None:
    out = tmp_path / "captions.jsonl"
    out.write_text('{"image": "/a.png", "caption": "A."}\nnot json\n{"image": "/b.png", "caption": "B."}\n')
    with pytest.raises(RequestError, match=r"Line 2 of .* Fix or delete that line"):
        read_results(out)


@pytest.mark.timeout(120)
def test_a_picture_that_cannot_be_read_is_reported_and_the_others_are_captioned(
    tmp_path: Path, shapes_smolvlm: SmolVLM
) -> None:
    paths = draw_pictures(tmp_path / "pictures", 2)
    broken = tmp_path / "pictures" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "captions.jsonl"
    report = caption_batch(shapes_smolvlm, tmp_path / "pictures", out, progress=False)
    assert report.captioned == 2 and list(report.failed) == [str(broken.resolve())]
    assert sorted(record["image"] for record in lines_of(out)) == sorted(str(p.resolve()) for p in paths)
    assert "1 failed" in report.summary()


@pytest.mark.timeout(60)
def test_a_bad_option_ends_the_run_with_the_models_message(tmp_path: Path, shapes_smolvlm: SmolVLM) -> None:
    paths = draw_pictures(tmp_path / "pictures", 2)
    out = tmp_path / "captions.jsonl"
    with pytest.raises(RequestError, match="SmolVLM has no caption option language"):
        caption_batch(shapes_smolvlm, paths, out, options={"language": "ja"}, progress=False)
    assert read_results(out) == {}


def test_what_to_caption_must_exist_and_hold_pictures(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="No picture or folder"):
        list_images([tmp_path / "missing.png"])
    with pytest.raises(ImageError, match="No pictures to caption"):
        list_images(tmp_path)
    (tmp_path / "a.png").write_bytes(b"")
    assert list_images([tmp_path / "a.png", tmp_path, str(tmp_path / "a.png")]) == [(tmp_path / "a.png").resolve()]


class Counter:
    def __init__(self, expected: int) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.most = 0
        self.expected = expected
        self.reached = threading.Event()  # `expected` requests have been in flight at once

    def slow_answer(self, handler: Handler) -> None:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
            if self.now >= self.expected:
                self.reached.set()
        try:
            # On a loaded machine the batch's first requests may start further apart than 0.3 s:
            # hold them until `expected` are in flight, so the count does not depend on timing.
            self.reached.wait(10)
            self.reached.set()  # after a timeout, the assertion on `most` tells: wait only once
            time.sleep(0.3)
            handler.start_events()
            handler.send_event(chunk("A shape.", finish_reason="stop"))
        finally:
            with self.lock:
                self.now -= 1


@pytest.mark.timeout(60)
@pytest.mark.parametrize("concurrency", [1, 3])
def test_a_remote_model_has_at_most_concurrency_requests_in_flight(tmp_path: Path, concurrency: int) -> None:
    paths = draw_pictures(tmp_path / "pictures", 9)
    counter = Counter(concurrency)
    with tiny_server(counter.slow_answer) as server:
        model = RemoteVLM(base_url=server.base_url, model="any")
        started = time.monotonic()
        report = caption_batch(model, paths, tmp_path / "out.jsonl", concurrency=concurrency, progress=False)
        elapsed = time.monotonic() - started
    assert report.captioned == 9 and counter.most == concurrency
    assert elapsed >= 9 / concurrency * 0.3, "never more than `concurrency` at once"
    assert {record["caption"] for record in lines_of(tmp_path / "out.jsonl")} == {"A shape."}


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("ctrl_c_raises")
def test_ctrl_c_stops_the_requests_in_flight_and_keeps_what_was_done(tmp_path: Path) -> None:
    paths = draw_pictures(tmp_path / "pictures", 4)
    answering = threading.Semaphore(0)
    interrupted: list[float] = []

    def endless_answer(handler: Handler) -> None:
        handler.start_events()
        handler.send_event(chunk("A"))
        answering.release()
        handler.wait_for_hang_up(30)

    def press_ctrl_c() -> None:  # Ctrl-C, a notebook's interrupt, once both requests are being answered
        # (not after a fixed delay: on a loaded machine the second request may not have started yet)
        if all(answering.acquire(timeout=10) for _ in range(2)):  # else no stray Ctrl-C: the run fails
            interrupted.append(time.monotonic())
            os.kill(os.getpid(), signal.SIGINT)

    with tiny_server(endless_answer) as server:
        model = RemoteVLM(base_url=server.base_url, model="any")
        presser = threading.Thread(target=press_ctrl_c)
        presser.start()
        with pytest.raises(KeyboardInterrupt):
            caption_batch(model, paths, tmp_path / "out.jsonl", concurrency=2, progress=False)
        presser.join()
        assert time.monotonic() - interrupted[0] < 5, "the answers in flight were cut, not waited for"
        assert server.hung_up.wait(3)
        assert len(server.requests) == 2, "nothing new starts after the interrupt"
    assert read_results(tmp_path / "out.jsonl") == {}


def test_concurrency_must_be_a_positive_whole_number(tmp_path: Path, shapes_smolvlm: SmolVLM) -> None:
    paths = draw_pictures(tmp_path / "pictures", 1)
    with pytest.raises(RequestError, match="concurrency"):
        caption_batch(shapes_smolvlm, paths, tmp_path / "out.jsonl", concurrency=0)


def batch_command(folder: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "vlm_notebook", "batch", str(folder), "--out", str(out), "--model", "shapes-smolvlm"]


@pytest.mark.timeout(420)
def test_a_batch_killed_halfway_and_run_again_ends_with_every_picture_once(
    tmp_path: Path, shapes_smolvlm: SmolVLM
) -> None:
    paths = draw_pictures(tmp_path / "pictures", 50)
    out = tmp_path / "captions.jsonl"
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        batch_command(tmp_path / "pictures", out), env=environment,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and process.poll() is None:
            if out.exists() and out.read_bytes().count(b"\n") >= 10:
                break
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait(30)
    done_before = len(read_results(out))
    assert 10 <= done_before < 50, "the first run must have been killed halfway"

    again = subprocess.run(
        batch_command(tmp_path / "pictures", out), env=environment, capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0, again.stderr
    assert f"50 of 50 pictures captioned ({50 - done_before} now, {done_before} before)" in again.stderr
    assert "50/50" in again.stderr, "the progress bar counts what was done before"
    records = lines_of(out)
    images = [record["image"] for record in records]
    assert len(images) == len(set(images)) == 50, "no picture twice"
    assert set(images) == {str(path.resolve()) for path in paths}, "none lost"
    for record in records[::7]:
        assert record["caption"] == shapes_smolvlm.caption(str(record["image"]))
