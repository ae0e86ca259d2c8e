"""The decoding engine's contract (``vlm_notebook.engine``): stop ids, max tokens, cancel, finish
reasons and bans, on a scripted step. The shipped models decode through the same function in
tests/test_smolvlm.py, tests/test_moondream.py and tests/test_decode.py (equal to ``generate``)."""

from __future__ import annotations

import queue
import threading

import torch

from vlm_notebook import engine
from vlm_notebook.options import GenerationOptions
from vlm_notebook.stream import StreamStats, TokenSink

VOCABULARY = 10
STOP = 9


def logits_for(token_id: int) -> torch.Tensor:
    """Logits whose greedy pick is ``token_id``."""
    return torch.nn.functional.one_hot(torch.tensor(token_id), VOCABULARY).float()[None]


def scripted(answer: list[int]) -> tuple[torch.Tensor, engine.Step, list[int]]:
    """The first logits and a step that make a greedy decoder write ``answer``; the ids fed to the step."""
    fed: list[int] = []

    def step(token_id: int) -> torch.Tensor:
        fed.append(token_id)
        return logits_for(answer[len(fed)])

    return logits_for(answer[0]), step, fed


def sink() -> tuple[TokenSink, StreamStats, threading.Event]:
    stats, cancel = StreamStats(), threading.Event()
    return TokenSink(stats, queue.Queue(), cancel), stats, cancel


def test_a_stop_id_is_generated_counted_and_ends_the_answer_with_stop() -> None:
    first, step, fed = scripted([1, 2, STOP, 3])
    into, stats, _ = sink()
    ids = engine.generate(first, step, GenerationOptions(max_new_tokens=10), {STOP}, into, None)
    assert ids == [1, 2, STOP] and fed == [1, 2], "the stop token is never fed back"
    assert (len(stats.token_times), stats.finish_reason) == (3, "stop")


def test_max_new_tokens_ends_the_answer_with_length() -> None:
    first, step, fed = scripted([1, 2, 3, 4, 5])
    into, stats, _ = sink()
    assert engine.generate(first, step, GenerationOptions(max_new_tokens=3), {STOP}, into, None) == [1, 2, 3]
    assert fed == [1, 2] and stats.finish_reason == "length"


def test_a_cancel_ends_after_the_current_token_without_a_finish_reason() -> None:
    first, step, fed = scripted([1, 2, 3, 4, 5])
    into, stats, cancel = sink()

    def cancelling_step(token_id: int) -> torch.Tensor:
        cancel.set()
        return step(token_id)

    ids = engine.generate(first, cancelling_step, GenerationOptions(max_new_tokens=10), {STOP}, into, None)
    assert ids == [1, 2] and fed == [1] and stats.finish_reason is None


def test_a_token_banned_after_the_first_may_only_come_first() -> None:
    first, step, _ = scripted([4, 4, 4, STOP])
    ids = engine.generate(first, step, GenerationOptions(max_new_tokens=3), {STOP}, None, None, banned_after_first={4})
    assert ids[0] == 4 and 4 not in ids[1:]


def test_every_step_is_preceded_by_before_step() -> None:
    first, step, fed = scripted([1, 2, STOP])
    calls: list[int] = []
    engine.generate(first, step, GenerationOptions(), {STOP}, None, None, before_step=lambda: calls.append(len(fed)))
    assert calls == [0, 1]


def test_finish_reasons_and_stop_ids_follow_one_rule() -> None:
    assert engine.finish_reason([1, STOP], {STOP}, 2) == "stop", "a stop id wins over the length"
    assert engine.finish_reason([1, 2], {STOP}, 2) == "length"
    assert engine.finish_reason([1], {STOP}, 2) is None
    assert engine.stop_ids(None) == frozenset() and engine.stop_ids(3) == {3} and engine.stop_ids([3, 4]) == {3, 4}
