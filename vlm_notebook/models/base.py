"""What every model family shares: names, loading once, input checks, streaming or not."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, ClassVar, Literal, overload

from PIL import Image

from .. import registry
from ..caption_options import read as read_caption_options
from ..chat import Chat
from ..images import load_image
from ..languages import CAPTION_PROMPTS
from ..options import DEFAULT_MAX_NEW_TOKENS, GenerationOptions, clean_question
from ..request import Request
from ..stream import TextStream, TokenSink, wait_for

if TYPE_CHECKING:  # the runtime needs torch; this module must not import it (cheap front ends)
    from ..runtime import Runtime


#: Models load one at a time in a process: transformers' loading keeps global state while it runs,
#: and two loads at once on two threads (two streams started on unloaded models) left a later load
#: with its tied output layer missing.
_ONE_LOAD_AT_A_TIME = threading.Lock()


class _LoadJob:
    """A load running on a thread of its own, which callers wait for.

    On a thread of its own so that it leaves no torch worker threads behind on the caller's thread.
    torch's CPU builds (GNU OpenMP) keep a team of threads for each thread that has run parallel
    work, for as long as that thread lives, and generations run on a stream's own thread: with a
    team left on a notebook's main thread too, the process holds more OpenMP threads than cores,
    OpenMP then stops spinning between parallel regions, and the many small ones of each decode
    step wait (``benchmarks/results/decode_threads.md``). A thread that ends takes its team along.

    A caller interrupted while it waits (Ctrl-C) leaves the load running: threads cannot be
    stopped halfway, and the next caller waits for the same load instead of starting another.
    """

    def __init__(self, work: Callable[[], None]) -> None:
        self._errors: list[BaseException] = []
        self._ended = threading.Event()
        threading.Thread(target=self._run, args=(work,), name="vlm-notebook-load", daemon=True).start()

    def _run(self, work: Callable[[], None]) -> None:
        try:
            work()
        except BaseException as error:  # raised again on the waiting caller's thread, never lost
            self._errors.append(error)
        finally:
            self._ended.set()

    @property
    def done(self) -> bool:
        return self._ended.is_set()

    def wait(self) -> None:
        """Until the load ends; its exception is raised here."""
        wait_for(self._ended)
        if self._errors:
            raise self._errors[0]


class VLM(ABC):
    """A vision-language model of one family. Loading happens once, on ``load()`` or first use.

    ``caption``, ``query`` and ``chat(...).ask`` each make a :class:`~vlm_notebook.request.Request`
    and stream its answer; a family implements ``_load`` and the one hook ``_answer`` (request in,
    tokens into a sink), and ``_check_request`` if it has limits. One generation runs at a time per
    model: a second caller (another thread, another widget, a stream still running) waits until
    the current generation ends, then runs (a server's requests run side by side instead).
    """

    family: ClassVar[str]
    default_model: ClassVar[str]
    caption_options: ClassVar[tuple[str, ...]] = ()  # the family's own options of ``caption``
    #: What ``caption`` asks when no option says otherwise (families that take text prompts).
    default_prompt: ClassVar[str] = CAPTION_PROMPTS["en"]
    #: Whether several requests may be in flight at once (a server batches them; a local model
    #: answers one at a time, so batch captioning sends it one picture after another).
    answers_concurrently: ClassVar[bool] = False
    #: Whether ``chat`` shows the model the earlier turns (False: each question on the picture alone).
    multi_turn: ClassVar[bool] = False

    def __init__(self, model: str | None = None, *, revision: str | None = None):
        self.entry = registry.resolve(model or self.default_model, family=self.family)
        self.name = self.entry.name
        self.revision = revision if revision is not None else self.entry.revision
        self._generation_lock = threading.Lock()
        self._load_lock = threading.Lock()  # a load's own nested load() returns before it (see load)
        self._loaded = False
        self._loading_thread: threading.Thread | None = None  # while a load runs: its thread
        self._load_job: _LoadJob | None = None  # a load not yet waited to its end
        #: Where and in what number format the model runs (None for a model that runs elsewhere).
        self.runtime: Runtime | None = None

    @property
    def device(self) -> str | None:
        """The device the model runs on ("cpu", "cuda:0", "mps"); None when a server runs it."""
        return self.runtime.device_name if self.runtime is not None else None

    @property
    def dtype(self) -> str | None:
        """Its number format ("float32", "bfloat16", "float16", "int8"); None when a server runs it."""
        return self.runtime.dtype_name if self.runtime is not None else None

    @property
    def loaded(self) -> bool:
        return self._loaded

    def load(self) -> VLM:
        """Load the checkpoint (once; later calls return at once). Returns the model."""
        if threading.current_thread() is self._loading_thread:
            return self  # the load's own format check, which uses what it has just loaded
        with self._load_lock:
            if not self._loaded:
                if self._load_job is None:  # else an interrupted caller's load: wait for it, not start another
                    self._load_job = _LoadJob(self._load_and_check)
                job = self._load_job
                try:
                    job.wait()
                finally:
                    if job.done:  # a failed load is tried again by the next call
                        self._load_job = None
        return self

    def _load_and_check(self) -> None:
        self._loading_thread = threading.current_thread()
        try:
            with _ONE_LOAD_AT_A_TIME:
                self._load()
            self._check_number_format()
            self._loaded = True  # here, not by the caller: one interrupted while waiting may never return
        finally:
            self._loading_thread = None

    def _check_number_format(self) -> None:
        """After loading (the model usable, the load lock held): a family that runs in a half format
        "auto" chose checks its first logits there (``runtime.float32_if_not_finite``). Default: none
        (a server picks its own format)."""
        return None

    @overload
    def query(
        self, image: Any, question: str, *, stream: Literal[False] = False, max_new_tokens: int = ...,
        temperature: float = ..., top_p: float = ..., seed: int | None = ...,
    ) -> str: ...

    @overload
    def query(
        self, image: Any, question: str, *, stream: Literal[True], max_new_tokens: int = ...,
        temperature: float = ..., top_p: float = ..., seed: int | None = ...,
    ) -> TextStream: ...

    @overload
    def query(
        self, image: Any, question: str, *, stream: bool, max_new_tokens: int = ...,
        temperature: float = ..., top_p: float = ..., seed: int | None = ...,
    ) -> str | TextStream: ...

    def query(
        self, image: Any, question: str, *, stream: bool = False, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None,
    ) -> str | TextStream:
        """Answer ``question`` about ``image``; with ``stream=True``, a stream of text chunks."""
        options = GenerationOptions(max_new_tokens, temperature, top_p, seed)
        request = Request(self._source(image), question=clean_question(question), options=options)
        return self._respond(request, stream)

    @overload
    def caption(
        self, image: Any, *values: Any, stream: Literal[False] = False, max_new_tokens: int = ...,
        temperature: float = ..., top_p: float = ..., seed: int | None = ..., **named: Any,
    ) -> str: ...

    @overload
    def caption(
        self, image: Any, *values: Any, stream: Literal[True], max_new_tokens: int = ...,
        temperature: float = ..., top_p: float = ..., seed: int | None = ..., **named: Any,
    ) -> TextStream: ...

    @overload
    def caption(
        self, image: Any, *values: Any, stream: bool, max_new_tokens: int = ...,
        temperature: float = ..., top_p: float = ..., seed: int | None = ..., **named: Any,
    ) -> str | TextStream: ...

    def caption(
        self, image: Any, *values: Any, stream: bool = False, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None, **named: Any,
    ) -> str | TextStream:
        """Describe ``image``; with ``stream=True``, a stream of text chunks.

        The family's own options (``caption_options``: SmolVLM's ``prompt``, Qwen2-VL's
        ``language``, Moondream's ``length``; ``vlm_notebook.caption_options`` says what each
        does) come by name, or after the image in that order: ``Moondream(...).caption(img, "short")``.
        """
        settings = read_caption_options(type(self).__name__, self.caption_options, values, named)
        options = GenerationOptions(max_new_tokens, temperature, top_p, seed)
        return self._respond(Request(self._source(image), caption=settings, options=options), stream)

    def caption_with(
        self, image: Any, *, stream: bool = False, options: Mapping[str, Any] | None = None, **generation: Any
    ) -> str | TextStream:
        """``caption`` for callers that hold the family's options in a mapping (magics, widgets,
        the command line); any option the family lacks is refused."""
        settings = read_caption_options(type(self).__name__, self.caption_options, (), dict(options or {}))
        request = Request(self._source(image), caption=settings, options=GenerationOptions(**generation))
        return self._respond(request, stream)

    def _source(self, image: Any) -> Any:
        """What a request holds of ``image``: an RGB picture (Moondream also keeps its encoded images)."""
        return load_image(image)

    def _respond(self, request: Request, stream: bool) -> str | TextStream:
        answer = self._stream(request)
        return answer if stream else join_stream(answer)

    def _stream(self, request: Request, then: Callable[[TokenSink], None] | None = None) -> TextStream:
        """The stream of the answer to ``request``; ``then`` runs after a complete answer, on the worker.

        Loaded, the request is checked here, so a bad one is refused before any stream starts. Not
        yet loaded, loading and the check run on the worker thread: the call returns at once (a
        widget or a notebook stays free while a checkpoint loads), and an error reaches the reader
        of the stream, as a generation's would; ``stream=False`` raises it here either way.
        One generation runs at a time per model, unless the family answers concurrently (a server).
        """
        checked = self.loaded
        if checked:
            self._check_request(request)

        def produce(sink: TokenSink) -> None:
            if not checked:
                self.load()
                self._check_request(request)
            self._answer(request, sink)
            if then is not None and not sink.cancelled:
                then(sink)

        answer = TextStream(produce, None if self.answers_concurrently else self._generation_lock)
        answer.stats.device, answer.stats.dtype = self.device, self.dtype
        return answer

    def prepare(self, image: Any) -> Future[None]:
        """Start the work on ``image`` that does not need the question; returns at once.

        Families that can reuse it (the transformers ones) encode the picture in the background,
        so a question asked later about the same picture starts from that work. The returned
        future ends when the work is done (``.result(timeout)`` re-raises its error). A bad image
        is refused here, before anything starts; a picture the loaded family cannot take fails the
        future. Generations wait while it runs, as for any other.
        """
        picture = load_image(image)
        done: Future[None] = Future()

        def work() -> None:
            try:
                self.load()
                self._check_request(Request(picture))  # the family's limits on pictures, as a caption would meet them
                with self._generation_lock:
                    self._prepare(picture)
            except BaseException as error:  # handed to whoever waits on the future
                done.set_exception(error)
            else:
                done.set_result(None)

        threading.Thread(target=work, name="vlm-notebook-prepare", daemon=True).start()
        return done

    def _prepare(self, picture: Image.Image) -> None:
        """Do the question-independent work on ``picture`` (default: none to do ahead)."""
        del picture

    def chat(self, image: Any) -> Chat:
        """A conversation about ``image``: ``chat.ask(question)`` answers with the turns so far
        (see ``vlm_notebook.chat`` for what each family does with them), ``chat.messages`` holds them."""
        return Chat(self, image)

    def _check_request(self, request: Request) -> None:
        """Refuse, before generating, a request the loaded model cannot take (default: none)."""
        del request  # families with limits override this

    @abstractmethod
    def _load(self) -> None:
        """Load weights and processor; on failure leave nothing half-loaded."""

    @abstractmethod
    def _answer(self, request: Request, sink: TokenSink) -> None:
        """The one hook of a family: answer ``request`` into ``sink``, token by token as they come
        (``vlm_notebook.engine`` states the contract). Runs on the stream's worker thread, loaded,
        after ``_check_request``."""

    def __repr__(self) -> str:
        state = "loaded" if self._loaded else "not loaded"
        return f"{type(self).__name__}({self.name!r}, {state})"


def join_stream(answer: TextStream) -> str:
    """The whole text of ``answer``: how ``stream=False`` answers.

    Generating on the stream's worker thread rather than the caller's is not only uniform: torch's
    threads on a notebook's main thread were 3-25x slower than on a worker while other programs
    held a core (see ``vlm_notebook/cpu.py``). A Ctrl-C while waiting cancels the generation.
    """
    return "".join(answer)
