"""The next token from a step's logits: greedy, or temperature with top-p (nucleus) sampling.

Used by the decoding loops this package runs itself (SmolVLM's and Moondream's); families that
decode with transformers' ``generate`` get its own logits processors instead.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from .options import GenerationOptions


class Sampler:
    """Picks token ids for one generation; ``banned`` ids are never picked.

    Sampling draws from a generator of its own, made on the device of the logits (a GPU's
    logits are sampled there), seeded with ``options.generator_seed`` when a seed is given (the
    same seed, the same tokens) and at random otherwise.
    """

    def __init__(self, options: GenerationOptions, banned: Iterable[int] = ()):
        self.options = options
        self._banned = list(banned)
        self._generator: torch.Generator | None = None

    def __call__(self, logits: torch.Tensor) -> int:
        scores = logits.reshape(-1).float()
        if self._banned:
            scores = scores.clone()
            scores[self._banned] = float("-inf")
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
