"""The decoding engine: from the prompt's last logits to the answer's tokens, one token per step.

Every answer a local model writes token by token goes through :func:`generate` (SmolVLM's
decoding loop, Moondream's) or, for the families that decode with transformers' ``generate``,
keeps the same contract through :func:`finish_reason` and :func:`stop_ids`. The contract:

- **Sampling.** ``options.greedy`` (temperature under 1e-5) picks the most likely token; otherwise
  temperature, then top-p (the smallest set of tokens whose mass reaches ``top_p``), drawn from a
  generator of the answer's own on the logits' device, seeded with ``options.seed`` when given
  (the same seed, the same tokens). ``banned_after_first`` ids are never picked after the first.
- **Stop ids.** A stop token (end of text or of the turn) is generated like any other: it is
  counted in the stream's tokens and handed to the sink (its text is empty: the detokenizer skips
  special tokens), and it ends the answer with finish reason ``"stop"``.
- **Max tokens.** At most ``options.max_new_tokens`` tokens (a family first cuts it to the room its
  context leaves: ``options.fit_to_context``); reaching it ends the answer with ``"length"``.
- **Cancel.** Checked after every token: a cancelled answer ends there, with no finish reason of
  its own (the stream calls it ``"cancelled"``). A long prefill checks it between layers itself.
- **Steps.** ``step(token_id)`` feeds a token to the model and returns the next logits;
  ``before_step`` runs before each (a CPU runtime switches torch's threads to decoding there).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable

import torch

from .detokenizer import Detokenizer
from .options import GenerationOptions
from .stream import TokenSink

#: Feeds one token id to the model; returns the next token's logits.
Step = Callable[[int], torch.Tensor]


class Sampler:
    """Picks the token ids of one answer (see the module docstring for greedy and sampled picks)."""

    def __init__(self, options: GenerationOptions):
        self.options = options
        self._generator: torch.Generator | None = None

    def __call__(self, logits: torch.Tensor, banned: Collection[int] = ()) -> int:
        scores = logits.reshape(-1).float()
        if banned:
            scores = scores.clone()
            scores[list(banned)] = float("-inf")
        if self.options.greedy:
            return int(scores.argmax())
        probabilities = torch.softmax(scores / self.options.temperature, dim=-1)
        if self.options.top_p >= 1.0:
            return int(torch.multinomial(probabilities, 1, generator=self._generator_on(scores.device)))
        ordered, order = probabilities.sort(descending=True)
        before = ordered.cumsum(0) - ordered  # mass of the tokens ranked above each one
        ordered[before >= self.options.top_p] = 0.0  # the smallest set that reaches top_p stays
        return int(order[torch.multinomial(ordered, 1, generator=self._generator_on(scores.device))])

    def _generator_on(self, device: torch.device) -> torch.Generator:
        if self._generator is None:
            self._generator = torch.Generator(device=device)
            if self.options.generator_seed is not None:  # any whole number, reduced to torch's 64 bits
                self._generator.manual_seed(self.options.generator_seed)
            else:
                self._generator.seed()
        return self._generator


def generate(
    first_logits: torch.Tensor,
    step: Step,
    options: GenerationOptions,
    stops: Collection[int],
    sink: TokenSink | None,
    detokenizer: Detokenizer | None,
    *,
    banned_after_first: Collection[int] = (),
    before_step: Callable[[], None] | None = None,
) -> list[int]:
    """The answer's token ids, from ``first_logits`` on (the module docstring's contract); each
    token goes to ``sink`` as it comes, with the text ``detokenizer`` makes of it."""
    pick = Sampler(options)
    token_ids = [pick(first_logits)]
    while True:
        token_id = token_ids[-1]
        if sink is not None:
            sink.put_token(detokenizer.step(token_id) if detokenizer is not None else None)
        reason = finish_reason(token_ids, stops, options.max_new_tokens)
        if reason is not None:
            if sink is not None:
                sink.set_finish_reason(reason)
            return token_ids
        if sink is not None and sink.cancelled:
            return token_ids
        if before_step is not None:
            before_step()
        token_ids.append(pick(step(token_id), banned_after_first))


def finish_reason(token_ids: list[int], stops: Collection[int], max_new_tokens: int) -> str | None:
    """Why an answer of ``token_ids`` ends: "stop" (it ends on a stop id), "length" (it has
    ``max_new_tokens``), or None (it goes on)."""
    if token_ids and token_ids[-1] in stops:
        return "stop"
    return "length" if len(token_ids) >= max_new_tokens else None


def stop_ids(eos_token_id: int | Iterable[int] | None) -> frozenset[int]:
    """The stop ids of a generation config's ``eos_token_id`` (one id, a list, or none)."""
    if eos_token_id is None:
        return frozenset()
    return frozenset([eos_token_id]) if isinstance(eos_token_id, int) else frozenset(eos_token_id)
