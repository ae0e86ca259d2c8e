"""Caption many pictures into a JSONL file, resumably.

``caption_batch(model, "photos/", "captions.jsonl")`` captions every picture of a folder (or of a
list of paths) and appends one JSON line per picture as soon as its caption is complete. Run it
again after an interruption (Ctrl-C, a crash, a killed process) and it skips the pictures already
in the file: none is lost and none appears twice. A line left half-written by a kill is removed;
a file that is not one a batch wrote is refused, untouched. While a run writes to a file, it holds
a lock on it (on POSIX systems): a second run on the same file is refused at once.

A remote model (``RemoteVLM``) gets ``concurrency`` requests in flight at once (default 4); a
local model captions one picture at a time. A server that is busy or failing for a moment (429,
5xx, a dropped connection, a timeout) is tried again, up to three tries per picture, after a
growing wait, or the wait its Retry-After asks for (capped at 30 s). A picture that still fails
is reported in ``failed`` and the others go on, unless five fail in a row: then the server is
down, and the run ends with that error. The progress bar is tqdm's, which draws itself in a
notebook as in a terminal.
"""

from __future__ import annotations

import contextlib
import json
import random
import sys
import threading
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from tqdm.auto import tqdm

from .errors import ImageError, RemoteError, RemoteTimeoutError, RemoteUnavailableError, RequestError
from .models.base import VLM
from .options import DEFAULT_MAX_NEW_TOKENS
from .stream import StreamStats, TextStream

if sys.platform != "win32":
    import fcntl

#: File name endings taken from a folder (other files there are left alone).
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
DEFAULT_REMOTE_CONCURRENCY = 4
MAX_CONCURRENCY = 256  # more requests at once than any server schedules: only threads and sockets wasted
ATTEMPTS = 3  # tries per picture when the server fails for a moment
FAILURES_IN_A_ROW = 5  # pictures failing in a row after all their tries: the server is down, stop
_FIRST_RETRY_SECONDS = 1.0  # the wait before the second try; doubled before each later one
_MAX_RETRY_SECONDS = 30.0  # cap on any wait, the server's own Retry-After included
_POLL_SECONDS = 0.2  # how often the waiting thread wakes, so a Ctrl-C is never held up
_STOP_SECONDS = 10.0  # at most this long, the end of a run waits for the captions in flight to stop
_RECORD_START = b'{"image": '  # how every line this module writes begins
_SERVER_FAILURES = (RemoteUnavailableError, RemoteTimeoutError)  # worth trying again


@dataclass
class BatchReport:
    """How a batch went: pictures in all, already captioned before this run, captioned now, failed."""

    out: Path
    total: int
    done_before: int
    captioned: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # picture -> why it has no caption
    retries: int = 0  # tries again after a server failure, all pictures together

    def summary(self) -> str:
        failed = f", {len(self.failed)} failed" if self.failed else ""
        retries = f", {self.retries} retries" if self.retries else ""
        return (
            f"{self.done_before + self.captioned} of {self.total} pictures captioned "
            f"({self.captioned} now, {self.done_before} before){failed}{retries}: {self.out}"
        )


def caption_batch(
    model: VLM,
    images: str | Path | Iterable[str | Path],
    out: str | Path,
    *,
    concurrency: int | None = None,
    options: Mapping[str, Any] | None = None,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    progress: bool = True,
) -> BatchReport:
    """Caption ``images`` (a folder, or paths of pictures and folders) into the JSONL file ``out``.

    ``options`` are the model's caption options (``prompt``, ``language``, ...). A picture that
    cannot be read, or that the model refuses (``ImageError``), or that a server still fails on
    after its tries, is reported in ``failed`` and the others go on; any other error (a bad option,
    a refused API key, a server down) ends the run and is raised, with every caption finished so
    far in ``out``: run again to resume.
    """
    out = output_path(out)
    paths = list_images(images)
    in_flight = _in_flight(model, concurrency)
    with _locked(out) as file:
        done = read_results(out)  # a file that is not a batch's is refused before the model loads
        model.load()
        pending = [path for path in paths if str(path) not in done]
        report = BatchReport(out, len(paths), len(paths) - len(pending))
        run = _Run(model, dict(options or {}), max_new_tokens)
        with tqdm(total=len(paths), initial=report.done_before, unit="picture", disable=not progress) as bar:
            run.caption_all(pending, in_flight, report, file, bar)
    return report


def list_images(images: str | Path | Iterable[str | Path]) -> list[Path]:
    """The pictures to caption, as absolute paths, each once, in order (a folder's sorted by name)."""
    items = [images] if isinstance(images, (str, Path)) else list(images)
    paths: list[Path] = []
    for item in items:
        path = Path(item).expanduser()
        if path.is_dir():
            paths.extend(sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
        elif path.is_file():
            paths.append(path)
        else:
            raise ImageError(f"No picture or folder at {str(path)!r}: check the path.")
    unique = list(dict.fromkeys(path.resolve() for path in paths))
    if not unique:
        raise ImageError(f"No pictures to caption (looked for {', '.join(sorted(IMAGE_SUFFIXES))} files).")
    return unique


def read_results(out: str | Path) -> dict[str, dict[str, Any]]:
    """The records already in ``out``, by picture path; removes a half-written last line (from a kill).

    A file with any other line is refused with ``RequestError`` and left as it is: it is not one a
    batch wrote (a picture, notes, another program's output), and cutting its last line would lose it.
    """
    out = Path(out)
    if not out.exists():
        return {}
    data = out.read_bytes()
    end = data.rfind(b"\n") + 1
    records: dict[str, dict[str, Any]] = {}
    for number, line in enumerate(data[:end].split(b"\n")[:-1], start=1):
        if line.strip():
            record = _parse_record(line, out, number)
            records[record["image"]] = record
    if end < len(data):
        _drop_partial_last_line(out, data[end:], end, number=data.count(b"\n") + 1)
    return records


def retry_wait(attempt: int, asked: float | None) -> float:
    """Seconds to wait after failed try ``attempt`` (1, 2, ...): what the server asked for in its
    Retry-After, else 1 s doubled after each try (plus up to a quarter, so that the requests in
    flight do not all come back at once); never more than 30 s."""
    if asked is None:
        base = _FIRST_RETRY_SECONDS * 2 ** (attempt - 1)
        asked = base * random.uniform(1.0, 1.25)
    return min(asked, _MAX_RETRY_SECONDS)


class _Run:
    """One batch run: workers caption pictures, the calling thread writes results and the bar."""

    def __init__(self, model: VLM, options: dict[str, Any], max_new_tokens: int):
        self.model = model
        self.options = options
        self.max_new_tokens = max_new_tokens
        self._streams: set[TextStream] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._retries = 0
        self._failures_in_a_row = 0

    def caption_all(self, pending: list[Path], in_flight: int, report: BatchReport, file: TextIO, bar: Any) -> None:
        with ThreadPoolExecutor(in_flight, thread_name_prefix="vlm-notebook-batch") as pool:
            waiting: dict[Future[tuple[str, StreamStats]], Path] = {}
            queue = iter(pending)
            try:
                self._top_up(pool, waiting, queue, in_flight)
                while waiting:
                    finished, _ = wait(waiting, timeout=_POLL_SECONDS, return_when=FIRST_COMPLETED)
                    # Every caption finished in this wait is written, even when another result ends the run.
                    endings = [self._record(waiting.pop(future), future, report, file, bar) for future in finished]
                    report.retries = self._retries
                    for ending in endings:
                        if ending is not None:
                            raise ending
                    self._top_up(pool, waiting, queue, in_flight)
            except BaseException:  # a Ctrl-C or an error that ends the run: stop what is in flight
                self._stop(waiting)
                self._keep_finished(waiting, report, file)
                raise

    def _keep_finished(self, waiting: dict[Future[tuple[str, StreamStats]], Path], report: BatchReport,
                       file: TextIO) -> None:
        """Write the captions that were complete when the run stopped (the rest end within a token)."""
        done, _ = wait(waiting, timeout=_STOP_SECONDS)
        for future in done:
            if not future.cancelled() and future.exception() is None:
                text, stats = future.result()
                _write(file, _record(waiting[future], text, stats, self.model.name), report.out)
                report.captioned += 1

    def _top_up(self, pool: ThreadPoolExecutor, waiting: dict[Any, Path], queue: Any, in_flight: int) -> None:
        """Keep ``in_flight`` pictures submitted (not more: the rest stay unread until their turn)."""
        while len(waiting) < in_flight:
            path = next(queue, None)
            if path is None:
                return
            waiting[pool.submit(self._caption, path)] = path

    def _record(self, path: Path, future: Future[tuple[str, StreamStats]], report: BatchReport,
                file: TextIO, bar: Any) -> Exception | None:
        """Write one picture's result (or note why it has none); the error that ends the run, if any."""
        try:
            text, stats = future.result()
        except ImageError as error:  # this picture only
            report.failed[str(path)] = str(error)
        except _SERVER_FAILURES as error:  # still failing after all its tries
            report.failed[str(path)] = str(error)
            self._failures_in_a_row += 1
            if self._failures_in_a_row >= FAILURES_IN_A_ROW:
                return _server_down(error, report.out)
        except Exception as error:  # a bad option, a refused key, ...: every picture would fail the same way
            return error
        else:
            _write(file, _record(path, text, stats, self.model.name), report.out)
            report.captioned += 1
            self._failures_in_a_row = 0
        bar.update(1)
        if report.failed:  # the count only: the pictures and reasons are in the report, said once
            bar.set_postfix_str(f"{len(report.failed)} failed", refresh=False)
        return None

    def _caption(self, path: Path) -> tuple[str, StreamStats]:
        """Caption one picture, trying again while the server fails for a moment (up to ATTEMPTS tries)."""
        attempt = 1
        while True:
            try:
                return self._caption_once(path)
            except _SERVER_FAILURES as error:
                if attempt >= ATTEMPTS:
                    raise
                asked = error.retry_after if isinstance(error, RemoteUnavailableError) else None
                self._pause(retry_wait(attempt, asked))
                attempt += 1

    def _caption_once(self, path: Path) -> tuple[str, StreamStats]:
        self._raise_if_stopping()
        stream = self.model.caption_with(path, stream=True, options=self.options, max_new_tokens=self.max_new_tokens)
        assert isinstance(stream, TextStream)
        with self._lock:
            self._streams.add(stream)
            if self._stopping.is_set():  # stopped between the check above and here: _stop missed it
                stream.cancel()
        try:
            with stream:
                text = "".join(stream)
        finally:
            with self._lock:
                self._streams.discard(stream)
        if stream.stats.finish_reason == "cancelled":  # cut short by the stop: never a caption
            self._raise_if_stopping()
        return text, stream.stats

    def _pause(self, seconds: float) -> None:
        with self._lock:
            self._retries += 1
        if self._stopping.wait(seconds):  # a Ctrl-C or the end of the run does not wait for a retry
            self._raise_if_stopping()

    def _raise_if_stopping(self) -> None:
        if self._stopping.is_set():
            raise RequestError("The batch was stopped.")  # never shown: the run ends with its own error

    def _stop(self, waiting: dict[Future[tuple[str, StreamStats]], Path]) -> None:
        self._stopping.set()
        for future in waiting:
            future.cancel()
        with self._lock:
            for stream in self._streams:
                stream.cancel()


def _record(path: Path, text: str, stats: StreamStats, model: str) -> dict[str, Any]:
    return {
        "image": str(path),
        "caption": text,
        "model": model,
        "finish_reason": stats.finish_reason,
        "tokens": stats.tokens,
        "time_to_first_token": stats.time_to_first_token,
        "seconds": stats.end_time,
    }


def _write(file: TextIO, record: dict[str, Any], out: Path) -> None:
    try:
        file.write(json.dumps(record, ensure_ascii=False) + "\n")
        file.flush()  # on disk as soon as it is done: a kill loses at most the pictures in flight
    except OSError as error:
        raise RequestError(
            f"Cannot write to {str(out)!r} ({error.strerror or error}): free some space or write elsewhere; "
            "the captions written so far are kept, run again to resume."
        ) from None


def _server_down(error: RemoteError, out: Path) -> RemoteError:
    return RemoteError(
        f"{FAILURES_IN_A_ROW} pictures in a row failed, each after {ATTEMPTS} tries: the model server seems to "
        f"be down. The last error: {error} The captions finished so far are in {str(out)!r}: run the batch "
        "again to caption the rest.",
        status_code=error.status_code,
    )


def _in_flight(model: VLM, concurrency: int | None) -> int:
    if concurrency is not None and (isinstance(concurrency, bool) or not isinstance(concurrency, int)
                                    or not 1 <= concurrency <= MAX_CONCURRENCY):
        raise RequestError(
            f"concurrency must be a whole number of requests from 1 to {MAX_CONCURRENCY}, got {concurrency!r}."
        )
    if not model.answers_concurrently:
        return 1  # a local model generates one answer at a time anyway
    return concurrency or DEFAULT_REMOTE_CONCURRENCY


def output_path(out: str | Path) -> Path:
    """``out`` as a path, refused before any work when no file can be written there."""
    path = Path(out).expanduser()
    if path.is_dir():
        raise RequestError(
            f"out {str(path)!r} is a folder: give the file to write the captions to, "
            f"e.g. {str(path / 'captions.jsonl')!r}."
        )
    if not path.parent.is_dir():
        raise RequestError(f"The folder of {str(path)!r} does not exist: create it, or write the captions elsewhere.")
    return path


@contextlib.contextmanager
def _locked(out: Path) -> Iterator[TextIO]:
    """``out`` open for appending, locked against a second run: two runs would caption every picture twice."""
    try:
        file = out.open("a", encoding="utf-8")
    except OSError as error:
        raise RequestError(
            f"Cannot open {str(out)!r} to write the captions ({error.strerror or error}): choose another file."
        ) from None
    with file:
        if sys.platform != "win32":  # no flock there: runs on one file are not kept apart
            _lock(file, out)
        yield file


if sys.platform != "win32":

    def _lock(file: TextIO, out: Path) -> None:
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RequestError(
                f"Another batch is writing to {str(out)!r} now (two runs on one file would caption every picture "
                "twice): wait for it to end, or write to another file."
            ) from None
        except OSError:  # a file system without locks: the run goes on unlocked, as it would anyway
            pass


def _drop_partial_last_line(out: Path, tail: bytes, end: int, number: int) -> None:
    """Cut the end a kill left in the middle of a line, if it is that: the start of a record, or zeros."""
    if not (_RECORD_START.startswith(tail[: len(_RECORD_START)]) or not tail.strip(b"\0")):
        raise RequestError(
            f"Line {number} of {str(out)!r}, the last, is not a caption record ({tail[:80]!r}): the file is not "
            "one this batch wrote. Write to another file, or fix or delete that line."
        )
    with out.open("r+b") as file:
        file.truncate(end)  # that picture is captioned again


def _parse_record(line: bytes, out: Path, number: int) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except ValueError as error:  # not JSON, or not UTF-8
        record = error
    if not isinstance(record, dict) or not isinstance(record.get("image"), str) or "caption" not in record:
        raise RequestError(
            f"Line {number} of {str(out)!r} is not a caption record ({str(record)[:80]}): the file is not one this "
            "batch wrote, or was edited. Fix or delete that line, or write to another file."
        )
    return record
