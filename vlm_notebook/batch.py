"""Caption many pictures into a JSONL file, resumably.

``caption_batch(model, "photos/", "captions.jsonl")`` captions every picture of a folder (or of a
list of paths) and appends one JSON line per picture as soon as its caption is complete. Run it
again after an interruption (Ctrl-C, a crash, a killed process) and it skips the pictures already
in the file: none is lost and none appears twice. A line left half-written by a kill is removed.

A remote model (``RemoteVLM``) gets ``concurrency`` requests in flight at once (default 4); a
local model captions one picture at a time. The progress bar is tqdm's, which draws itself in a
notebook as in a terminal.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .errors import ImageError, RequestError
from .models.base import VLM
from .models.remote import RemoteVLM
from .options import DEFAULT_MAX_NEW_TOKENS
from .stream import StreamStats, TextStream

#: File name endings taken from a folder (other files there are left alone).
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
DEFAULT_REMOTE_CONCURRENCY = 4
_POLL_SECONDS = 0.2  # how often the waiting thread wakes, so a Ctrl-C is never held up


@dataclass
class BatchReport:
    """How a batch went: pictures in all, already captioned before this run, captioned now, failed."""

    out: Path
    total: int
    done_before: int
    captioned: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # picture -> why it has no caption

    def summary(self) -> str:
        failed = f", {len(self.failed)} failed" if self.failed else ""
        return (
            f"{self.done_before + self.captioned} of {self.total} pictures captioned "
            f"({self.captioned} now, {self.done_before} before){failed}: {self.out}"
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
    cannot be read, or that the model refuses (``ImageError``), is reported in ``failed`` and the
    others go on; any other error (a bad option, a server that stopped) ends the run and is
    raised, with every caption finished so far in ``out``: run again to resume.
    """
    paths = list_images(images)
    in_flight = _in_flight(model, concurrency)
    model.load()
    out = Path(out)
    done = read_results(out)
    pending = [path for path in paths if str(path) not in done]
    report = BatchReport(out, len(paths), len(paths) - len(pending))
    run = _Run(model, dict(options or {}), max_new_tokens)
    with (
        tqdm(total=len(paths), initial=report.done_before, unit="picture", disable=not progress) as bar,
        out.open("a", encoding="utf-8") as file,
    ):
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
    """The records already in ``out``, by picture path; removes a half-written last line (from a kill)."""
    out = Path(out)
    if not out.exists():
        return {}
    _drop_partial_last_line(out)
    records: dict[str, dict[str, Any]] = {}
    for number, line in enumerate(out.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            record = _parse_record(line, out, number)
            records[record["image"]] = record
    return records


class _Run:
    """One batch run: workers caption pictures, the calling thread writes results and the bar."""

    def __init__(self, model: VLM, options: dict[str, Any], max_new_tokens: int):
        self.model = model
        self.options = options
        self.max_new_tokens = max_new_tokens
        self._streams: set[TextStream] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    def caption_all(self, pending: list[Path], in_flight: int, report: BatchReport, file: Any, bar: Any) -> None:
        with ThreadPoolExecutor(in_flight, thread_name_prefix="vlm-notebook-batch") as pool:
            waiting: dict[Future[tuple[str, StreamStats]], Path] = {}
            queue = iter(pending)
            try:
                self._top_up(pool, waiting, queue, in_flight)
                while waiting:
                    finished, _ = wait(waiting, timeout=_POLL_SECONDS, return_when=FIRST_COMPLETED)
                    for future in finished:
                        self._record(waiting.pop(future), future, report, file, bar)
                    self._top_up(pool, waiting, queue, in_flight)
            except BaseException:  # a Ctrl-C or an error that ends the run: stop what is in flight
                self._stop(waiting)
                raise

    def _top_up(self, pool: ThreadPoolExecutor, waiting: dict[Any, Path], queue: Any, in_flight: int) -> None:
        """Keep ``in_flight`` pictures submitted (not more: the rest stay unread until their turn)."""
        while len(waiting) < in_flight:
            path = next(queue, None)
            if path is None:
                return
            waiting[pool.submit(self._caption, path)] = path

    def _record(self, path: Path, future: Future[tuple[str, StreamStats]], report: BatchReport,
                file: Any, bar: Any) -> None:
        try:
            text, stats = future.result()
        except ImageError as error:  # this picture only; any other error ends the run
            report.failed[str(path)] = str(error)
            bar.write(f"skipped {path}: {error}")
        else:
            file.write(json.dumps(_record(path, text, stats, self.model.name), ensure_ascii=False) + "\n")
            file.flush()  # on disk as soon as it is done: a kill loses at most the pictures in flight
            report.captioned += 1
        bar.update(1)

    def _caption(self, path: Path) -> tuple[str, StreamStats]:
        if self._stopping.is_set():
            raise RequestError("the batch was stopped")
        stream = self.model.caption_with(path, stream=True, options=self.options, max_new_tokens=self.max_new_tokens)
        assert isinstance(stream, TextStream)
        with self._lock:
            self._streams.add(stream)
            if self._stopping.is_set():  # stopped between the check above and here: _stop missed it
                stream.cancel()
        try:
            with stream:
                text = "".join(stream)
            return text, stream.stats
        finally:
            with self._lock:
                self._streams.discard(stream)

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


def _in_flight(model: VLM, concurrency: int | None) -> int:
    if concurrency is not None and (isinstance(concurrency, bool) or not isinstance(concurrency, int)
                                    or concurrency < 1):
        raise RequestError(f"concurrency must be a whole number of requests, at least 1, got {concurrency!r}.")
    if not isinstance(model, RemoteVLM):
        return 1  # a local model generates one answer at a time anyway
    return concurrency or DEFAULT_REMOTE_CONCURRENCY


def _drop_partial_last_line(out: Path) -> None:
    data = out.read_bytes()
    if not data or data.endswith(b"\n"):
        return
    with out.open("r+b") as file:
        file.truncate(data.rfind(b"\n") + 1)  # a kill mid-write: that picture is captioned again


def _parse_record(line: str, out: Path, number: int) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        record = error
    if not isinstance(record, dict) or not isinstance(record.get("image"), str) or "caption" not in record:
        raise RequestError(
            f"Line {number} of {str(out)!r} is not a caption record ({str(record)[:80]}): the file is not one this "
            "batch wrote, or was edited. Fix or delete that line, or write to another file."
        )
    return record
