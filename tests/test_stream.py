"""The stream contract, with plain Python producers (the real models are tested in test_smolvlm)."""

from __future__ import annotations

import signal
import threading
import time

import pytest

from vlm_notebook.stream import StreamStats, TextStream, TokenSink


def producer_of(chunks: list[str | None], delay: float = 0.0):
    def produce(sink: TokenSink) -> None:
        sink.set_prompt(prompt_tokens=5, image_tokens=2)
        for chunk in chunks:
            if sink.cancelled:
                return
            time.sleep(delay)
            sink.put_token(chunk)

    return produce


def endless(sink: TokenSink) -> None:
    while not sink.cancelled:
        time.sleep(0.005)
        sink.put_token("x")


def test_chunks_arrive_in_order_and_empty_tokens_yield_no_chunk() -> None:
    stream = TextStream(producer_of(["a", None, "b", "", "c"]))
    assert list(stream) == ["a", "b", "c"]
    assert stream.text == "abc"
    assert stream.stats.tokens == 5, "every token counts, even one that completes no character"


def test_stats_are_consistent() -> None:
    stream = TextStream(producer_of([None, "a", "b"], delay=0.01))
    list(stream)
    stats = stream.stats
    assert stats.prompt_tokens == 5 and stats.image_tokens == 2
    assert stats.time_to_first_token is not None and stats.time_to_first_text is not None
    assert stats.end_time is not None
    assert 0 < stats.time_to_first_token < stats.time_to_first_text <= stats.end_time
    assert stats.token_times == sorted(stats.token_times)
    assert len(stats.inter_token_latencies) == 2
    assert stats.tokens_per_second == pytest.approx(3 / stats.end_time)
    assert stats.finish_reason == "stop"
    assert "3 tokens" in stats.summary()


@pytest.mark.timeout(10)
def test_a_producer_exception_reaches_the_consumer_as_itself() -> None:
    failure = RuntimeError("the model broke")

    def produce(sink: TokenSink) -> None:
        sink.put_token("a")
        raise failure

    stream = TextStream(produce)
    with pytest.raises(RuntimeError) as caught:
        list(stream)
    assert caught.value is failure
    assert stream.stats.finish_reason == "error"
    assert not stream.running
    with pytest.raises(RuntimeError):
        stream.wait(1)


@pytest.mark.timeout(10)
def test_cancel_stops_the_worker_and_no_thread_outlives_the_stream() -> None:
    stream = TextStream(endless)
    chunks = []
    for chunk in stream:
        chunks.append(chunk)
        if len(chunks) == 3:
            stream.cancel()
    assert not stream.running
    assert stream.stats.finish_reason == "cancelled"


@pytest.mark.timeout(10)
def test_leaving_a_with_block_cancels() -> None:
    with TextStream(endless) as stream:
        next(stream)
    assert not stream.running
    assert stream.stats.finish_reason == "cancelled"


@pytest.mark.timeout(10)
def test_keyboard_interrupt_in_the_consumer_cancels_the_worker() -> None:
    stream = TextStream(endless)
    next(stream)
    interrupted = False
    real_get = stream._chunks.get

    def get_interrupted(*args: object, **kwargs: object) -> object:
        nonlocal interrupted
        if not interrupted:
            interrupted = True
            raise KeyboardInterrupt
        return real_get(*args, **kwargs)

    stream._chunks.get = get_interrupted  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        next(stream)
    assert not stream.running
    assert stream.stats.finish_reason == "cancelled"


@pytest.mark.timeout(10)
@pytest.mark.usefixtures("ctrl_c_raises")
def test_a_ctrl_c_in_wait_cancels_the_worker_and_the_stream_says_so() -> None:
    """As a notebook's interrupt does: a real SIGINT at the main thread while it waits. (Python
    3.11 took a thread whose join was interrupted for ended: the stream said it was not running.)"""
    stream = TextStream(endless)
    next(stream)
    main = threading.main_thread().ident
    assert main is not None
    threading.Timer(0.2, signal.pthread_kill, (main, signal.SIGINT)).start()
    with pytest.raises(KeyboardInterrupt):
        stream.wait(5)
    assert not stream.running and stream.stats.finish_reason == "cancelled"
    assert stream.wait(1) == stream.text


@pytest.mark.timeout(10)
def test_generation_cancelled_raised_by_a_producer_ends_quietly() -> None:
    def produce(sink: TokenSink) -> None:
        sink.put_token("a")
        while True:
            sink.raise_if_cancelled()
            time.sleep(0.005)

    stream = TextStream(produce)
    assert next(stream) == "a"
    stream.cancel()
    assert list(stream) == []
    assert stream.stats.finish_reason == "cancelled"


@pytest.mark.timeout(10)
def test_streams_sharing_a_lock_run_one_at_a_time() -> None:
    lock = threading.Lock()
    running = []
    overlaps = []

    def produce(sink: TokenSink) -> None:
        running.append(1)
        overlaps.append(len(running))
        for _ in range(5):
            time.sleep(0.005)
            sink.put_token("t")
        running.pop()

    streams = [TextStream(produce, lock) for _ in range(4)]
    assert all(stream.wait(5) == "ttttt" for stream in streams)
    assert max(overlaps) == 1


@pytest.mark.timeout(10)
def test_a_stream_cancelled_while_waiting_for_the_model_never_runs() -> None:
    lock = threading.Lock()
    lock.acquire()
    ran = threading.Event()
    stream = TextStream(lambda sink: ran.set(), lock)
    stream.cancel()
    assert list(stream) == []
    assert not ran.is_set()
    lock.release()


@pytest.mark.timeout(10)
def test_wait_times_out_on_a_running_stream() -> None:
    stream = TextStream(endless)
    with pytest.raises(TimeoutError):
        stream.wait(0.05)
    stream.close()
    assert not stream.running



def test_the_summary_shows_the_decoding_rate_not_counting_the_wait_for_the_first_token() -> None:
    stats = StreamStats(token_times=[20.0, 21.0, 22.0])
    assert stats.summary() == "TTFT 20.00 s · 3 tokens · 1.0 tokens/s", "2 tokens in the 2 s after the first"
    stats.end_time = 22.5
    assert stats.summary() == "TTFT 20.00 s · 3 tokens · 1.0 tokens/s"
    assert stats.tokens_per_second == pytest.approx(3 / 22.5)  # end to end, for benchmarks
    assert StreamStats(token_times=[0.5]).summary() == "TTFT 0.50 s · 1 tokens · - tokens/s"
    assert StreamStats().summary() == "TTFT - · 0 tokens · - tokens/s"


def iterate_from_two_threads(stream: TextStream) -> tuple[list[list[str]], list[BaseException]]:
    shares: list[list[str]] = [[], []]
    raised: list[BaseException] = []

    def read(share: list[str]) -> None:
        try:
            for chunk in stream:
                share.append(chunk)
        except BaseException as error:  # what each thread meets is under test
            raised.append(error)

    readers = [threading.Thread(target=read, args=(share,)) for share in shares]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join(10)
    assert not any(reader.is_alive() for reader in readers), "neither thread waits for ever"
    return shares, raised


@pytest.mark.timeout(60)
def test_two_threads_iterating_one_stream_share_its_chunks_and_both_end() -> None:
    chunks = [f"{index} " for index in range(40)]
    for delay in (0.0, 0.001):  # a queue that fills faster than it is read, and one that waits
        for _ in range(25):
            stream = TextStream(producer_of(list(chunks), delay=delay))
            shares, raised = iterate_from_two_threads(stream)
            assert raised == []
            assert sorted(shares[0] + shares[1]) == sorted(chunks), "each chunk to exactly one thread"
            assert all(share == sorted(share, key=chunks.index) for share in shares), "each in order"
            assert next(stream, None) is None and stream.stats.finish_reason == "stop"


@pytest.mark.timeout(60)
def test_two_threads_iterating_a_failing_stream_both_get_its_exception() -> None:
    failure = RuntimeError("the model broke")

    def produce(sink: TokenSink) -> None:
        for chunk in "abcdef":
            sink.put_token(chunk)
        raise failure

    for _ in range(25):
        stream = TextStream(produce)
        shares, raised = iterate_from_two_threads(stream)
        assert raised == [failure, failure], "the failure is never hidden behind a plain end"
        assert "".join(sorted(shares[0] + shares[1])) == "abcdef"
        with pytest.raises(RuntimeError) as again:
            next(stream)
        assert again.value is failure, "a failed stream keeps saying so"
