"""How the batched step loop shares its steps between prompt reads and decodes (pure; no
llama.cpp, so testable anywhere).

A step reads prompt chunks first, in one llama_decode, and hands out the first tokens they give
before it decodes the generating streams in a second one (worker.batched_engine says why two),
so a new prompt never waits for the whole batch's decode. While prompts are due, the decode
waits for them within a bound, and they are read the shortest first, a few at a time where each
token costs (PromptsFirst, from the measured CallCost): on a CPU a burst of requests then gets
its first tokens in turn rather than all after one long read of every prompt.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field


def plan_chunks(left: Sequence[int], budget: int) -> tuple[int, list[int]]:
    """One chunk size for this step's prompt reads, and which prompts (indices into `left`,
    their tokens still to read, each >= 2) read that many.

    One size, so that llama.cpp reads them in one ubatch (per run of consecutive ids) holding
    that many tokens of each stream, >= 2. A prompt joins when it has exactly `size` tokens left
    or `size` + 2 or more, never leaving a lone token for later; the others wait a step. The
    size is the one that reads the most tokens within the budget (>= 3)."""
    best = (0, 0, 0)  # (tokens, prompts, size)
    for size in set(left) | {n - 2 for n in left} | {budget // k for k in range(1, 17)}:
        if 2 <= size <= budget:
            joins = sum(1 for n in left if n == size or n >= size + 2)
            count = min(joins, budget // size)
            best = max(best, (size * count, count, size))
    _, count, size = best
    joining = [i for i, n in enumerate(left) if n == size or n >= size + 2]
    return size, joining[:count]


@dataclass(slots=True)
class CallCost:
    """What a llama_decode reading n prompt tokens takes: overhead_s + token_s * n, fitted by
    least squares over the recent calls, each weighing `decay` times the next one's."""

    decay: float = 0.98
    sums: tuple[float, float, float, float, float] = (0.0, 0.0, 0.0, 0.0, 0.0)  # w t s tt ts

    def observe(self, tokens: int, seconds: float) -> None:
        d = self.decay
        w, t, s, tt, ts = self.sums
        n = float(tokens)
        self.sums = (w * d + 1, t * d + n, s * d + seconds, tt * d + n * n, ts * d + n * seconds)

    def fit(self) -> tuple[float, float] | None:
        """(overhead_s, token_s); None until calls of different sizes were seen."""
        w, t, s, tt, ts = self.sums
        spread = w * tt - t * t  # w^2 times the variance of the token counts
        if w < 2 or spread < 0.25 * w * w:
            return None
        token_s = max(0.0, (w * ts - t * s) / spread)
        return max(0.0, (s - token_s * t) / w), token_s


@dataclass(slots=True)
class PromptsFirst:
    """When the generating streams' decode waits for prompts, and how many prompts a call reads.

    Prompts due are read first, the shortest first, in groups whose size minimises the mean
    time to their first tokens: n prompts of t tokens read k at a time cost o + p*k*t a call
    (CallCost) and wait (n/k + 1)/2 calls on average, least at k = sqrt(n*o / (p*t)): one call
    for all where a call's overhead dominates (a GPU), a few at a time where every token costs
    (a CPU). The decodes wait for them while the streams' oldest token has waited less than a
    full prompt chunk (`budget` tokens) would take, counting the chunk about to be read: the
    longest a stream waited before, when every step read a chunk beside the decodes. Touched
    only by the inference thread; `clock` is injectable for tests."""

    budget: int
    clock: Callable[[], float] = time.monotonic
    cost: CallCost = field(default_factory=CallCost)

    def plan(self, left: Sequence[int]) -> tuple[int, list[int]]:
        """This step's chunk size and prompts (indices into `left`, the tokens each has still
        to read): the shortest first, as many as `group` reads at once (see plan_chunks)."""
        order = sorted(range(len(left)), key=left.__getitem__)
        if order:
            order = order[: self.group(len(left), sum(left) / len(left))]
        size, joining = plan_chunks([left[i] for i in order], self.budget)
        return size, [order[j] for j in joining]

    def group(self, prompts: int, tokens_each: float) -> int:
        fitted = self.cost.fit()
        if fitted is None or fitted[1] <= 0 or prompts <= 1:
            return prompts
        overhead_s, token_s = fitted
        k = round(math.sqrt(prompts * overhead_s / (token_s * max(tokens_each, 1.0))))
        return max(1, min(prompts, k))

    def starved(self, oldest_s: float, tokens: int) -> bool:
        """Whether streams whose oldest token was sampled at `oldest_s` must decode before a
        prompt chunk of `tokens` tokens (unknown costs: yes)."""
        fitted = self.cost.fit()
        if fitted is None:
            return True
        return self.clock() - oldest_s > fitted[1] * (self.budget - tokens)
