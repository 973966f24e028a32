"""A model-free engine with fixed timing and deterministic text, for router tests and benchmarks.

Each "token" is one word with a leading space, cycling through a fixed list. Prompt tokens are
counted as whitespace-separated words plus 4 per message (a stand-in for the chat template).
Without max_tokens the fake "reaches end of generation" after 16 tokens (finish_reason "stop"),
so requests end the way most real ones do; an explicit max_tokens ends with "length".
Never the default engine.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Final

from contract.wire import Message, SamplingParams
from worker.engine import Finished, FinishReason, check_prompt
from worker.stops import StopMatcher

WORDS = ("The", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog.")
NATURAL_LENGTH = 16
TOKENS_PER_MESSAGE = 4


def count_prompt_tokens(messages: Sequence[Message]) -> int:
    return sum(len(m.content.split()) + TOKENS_PER_MESSAGE for m in messages)


class FakeEngine:
    def __init__(
        self,
        *,
        ttft_ms: float,
        tokens_per_s: float,
        n_ctx: int = 4096,
        slots: int = 1,
        default_max_tokens: int | None = None,
    ) -> None:
        self._ttft_s = max(0.0, ttft_ms) / 1000
        self._default_max_tokens = default_max_tokens  # None: the natural length only
        self._gap_s = 1 / tokens_per_s if tokens_per_s > 0 else 0.0
        self.n_ctx: Final = n_ctx
        self.slots: Final = slots

    @property
    def device(self) -> str:
        return "cpu"

    async def load(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def stream(
        self, messages: Sequence[Message], params: SamplingParams
    ) -> AsyncIterator[str | Finished]:
        prompt_tokens = count_prompt_tokens(messages)
        check_prompt(prompt_tokens, self.n_ctx)
        room = self.n_ctx - prompt_tokens
        final: FinishReason
        if params.max_tokens is None:
            natural = min(NATURAL_LENGTH, self._default_max_tokens or NATURAL_LENGTH)
            limit = min(natural, room)
            final = "stop" if limit == NATURAL_LENGTH else "length"
        else:
            limit, final = min(params.max_tokens, room), "length"

        loop = asyncio.get_running_loop()
        # Sleep to absolute deadlines so the token rate does not drift under load.
        start = loop.time() + self._ttft_s
        matcher = StopMatcher(params.stop)
        for i in range(limit):
            delay = start + i * self._gap_s - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            text, stopped = matcher.feed(" " + WORDS[i % len(WORDS)])
            if text:
                yield text
            if stopped:
                yield Finished("stop", prompt_tokens, i + 1)
                return
        tail = matcher.flush()
        if tail:
            yield tail
        yield Finished(final, prompt_tokens, limit)
