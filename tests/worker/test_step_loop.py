"""The step loop's share of steps between prompts and decodes, on the real model: its loop
driven turn by turn here (not on its thread), its DecodeGate on a clock the test sets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from contract.wire import Message, SamplingParams
from worker.engine import Item

from .real_model import real_model_path

pytest.importorskip("llama_cpp", reason="needs llama-cpp-python")
pytestmark = pytest.mark.llama

from worker.batched_engine import BatchedLlamaEngine  # noqa: E402 (llama_cpp)
from worker.prefill import CallCost, PromptsFirst  # noqa: E402
from worker.step_loop import Request, StepLoop  # noqa: E402

MODEL_PATH = real_model_path()
GREEDY = SamplingParams(max_tokens=12, temperature=0.0)
QUESTIONS = (
    "Write a haiku about the sea.",
    "List three prime numbers.",
    "Name a painter.",
    "What is the capital of France?",
    "Explain gravity in one sentence.",
)


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def steps() -> AsyncIterator[StepLoop]:
    """A batched engine's step loop, loaded but not started: the test turns it."""
    engine = BatchedLlamaEngine(MODEL_PATH, n_ctx=256, n_threads=2, slots=4, prefill_chunk=64)
    loop = await asyncio.to_thread(engine._load)
    try:
        yield loop
    finally:
        await asyncio.to_thread(engine._free)


def request(steps: StepLoop, question: str) -> Request:
    chat = steps._chat
    messages = [Message("system", "You are a helpful assistant."), Message("user", question)]
    out: asyncio.Queue[Item] = asyncio.Queue()
    return Request(chat.prompt_tokens(messages), GREEDY, asyncio.get_running_loop(), out)


def turn(steps: StepLoop, arriving: Request | None = None) -> None:
    """One turn of StepLoop.run's loop; `arriving` comes in while the step runs."""
    assert steps._collect()
    steps._schedule()
    if arriving is not None:
        steps.submit(arriving)
    if any(steps._by_id):
        steps._step()
    steps._post()


def tokens(steps: StepLoop, req: Request) -> int:
    return next(s.completion_tokens for s in steps._by_id if s is not None and s.request is req)


async def text(req: Request) -> str:
    await asyncio.sleep(0)  # deliveries are call_soon_threadsafe callbacks
    parts: list[str] = []
    while not req.out.empty():
        item = req.out.get_nowait()
        if isinstance(item, str):
            parts.append(item)
        assert not isinstance(item, BaseException)
    return "".join(parts)


async def alone(steps: StepLoop, question: str) -> str:
    req = request(steps, question)
    steps.submit(req)
    while True:
        turn(steps)
        if not any(steps._by_id):
            return await text(req)


class Costs(CallCost):
    """Every call costs 4 ms plus 4 ms a token, whatever it took."""

    def observe(self, tokens: int, seconds: float) -> None:
        pass

    def fit(self) -> tuple[float, float]:
        return 0.004, 0.004


async def test_prompts_arriving_put_the_decode_off_until_it_is_due(steps: StepLoop) -> None:
    clock = Clock()
    steps._policy = PromptsFirst(64, clock, Costs())
    a, b, c, d, e = reqs = [request(steps, q) for q in QUESTIONS]
    steps.submit(a)
    for _ in range(3):
        turn(steps)  # the first reads a's prompt and decodes the token that gives
    assert tokens(steps, a) == 4
    # a's token was sampled just now; b is read, and c arrives meanwhile.
    steps.submit(b)
    turn(steps, arriving=c)
    assert (tokens(steps, a), tokens(steps, b)) == (4, 1)  # a's decode waits for c
    first = await text(b)
    assert first  # b's first token went out at once
    turn(steps)  # c is read; no prompt is left, so the decode is due: c's first token too
    assert (tokens(steps, a), tokens(steps, b), tokens(steps, c)) == (5, 2, 2)
    # Streams that waited longer than a full 64-token chunk takes less d's chunk decode first.
    clock.now += 0.2
    steps.submit(d)
    turn(steps, arriving=e)  # all four slots busy: e waits for one
    assert (tokens(steps, a), tokens(steps, c), tokens(steps, d)) == (6, 3, 1)
    while any(steps._by_id) or not steps._incoming.empty() or steps._waiting:
        turn(steps)
    together = [await text(r) for r in reqs]
    together[1] = first + together[1]
    # Put off or not, each stream's output is what it gives alone.
    assert together == [await alone(steps, q) for q in QUESTIONS]
