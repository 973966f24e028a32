"""The closed loop both parts of the batched scenario drive: `concurrency` clients, each sending
`rounds` requests back to back, distinct "write a long story" prompts sharing a system prompt.
A request is a callable that returns its completion tokens and its time to first text."""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from contract.wire import Message

SUBJECTS = (
    "a lighthouse keeper and a storm", "a dragon who collects teapots", "a lost robot in Paris",
    "two rival bakers in a small town", "a girl who can talk to birds", "a ship made of ice",
    "the last library on the moon", "a detective cat in London", "a village under a volcano",
    "a clockmaker and a stolen hour", "a pirate afraid of water", "a garden that grows music",
    "a train that never stops", "an astronaut and a whale", "a king who forgot his name",
    "a painter of storms",
)  # fmt: skip
SYSTEM = "You are a helpful assistant."
HTTP_MODEL_ID = "bench-model"
WARM_UP_TOKENS = 4


def ask(subject: str) -> list[Message]:
    return [Message("system", SYSTEM), Message("user", f"Write a long story about {subject}.")]


@dataclass(frozen=True, slots=True)
class Level:
    concurrency: int
    requests: int
    completion_tokens: int
    wall_s: float
    tokens_per_s: float
    ttft_mean_ms: float
    ttft_p50_ms: float
    ttft_max_ms: float

    @classmethod
    def of(cls, concurrency: int, tokens: int, wall_s: float, ttfts: list[float]) -> Level:
        return cls(
            concurrency=concurrency,
            requests=len(ttfts),
            completion_tokens=tokens,
            wall_s=round(wall_s, 3),
            tokens_per_s=round(tokens / wall_s, 2),
            ttft_mean_ms=round(statistics.fmean(ttfts) * 1e3, 1),
            ttft_p50_ms=round(statistics.median(ttfts) * 1e3, 1),
            ttft_max_ms=round(max(ttfts) * 1e3, 1),
        )


# One request: (subject) -> (its completion tokens, seconds from the call to its first text).
Request = Callable[[str], Awaitable[tuple[int, float]]]


async def closed_loop(request: Request, concurrency: int, rounds: int) -> Level:
    """`concurrency` clients, each sending `rounds` requests back to back."""
    ttfts: list[float] = []
    tokens = 0

    async def client(i: int) -> None:
        nonlocal tokens
        for r in range(rounds):
            subject = SUBJECTS[(i + r * concurrency) % len(SUBJECTS)]
            completion_tokens, ttft_s = await request(subject)
            tokens += completion_tokens
            ttfts.append(ttft_s)

    started = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(concurrency)))
    return Level.of(concurrency, tokens, time.perf_counter() - started, ttfts)


async def warm_up(request: Request, slots: int) -> None:
    """Every slot serves a short request first, so that levels start in the steady state of a
    running server: first-use allocations done, and each slot's prompt cache holding a previous
    request (the shared system prompt), as LlamaEngine's one cache does."""
    await closed_loop(request, slots, 1)


def progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
