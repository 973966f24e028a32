"""The fake engine's simulated prompt cache: slot choice, cached_tokens, advertised prefixes,
prefill time, and ignore_eos."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator
from contextlib import aclosing

from contract.wire import Message, SamplingParams
from worker.engine import Chat, Finished, Prompt
from worker.fake_engine import FakeEngine, count_prompt_tokens, fake_tokens

SYSTEM = Message("system", "You are terse. " * 20)  # 60 words
A = Chat((SYSTEM, Message("user", "first question")), "a" * 16)
B = Chat((Message("user", "something else entirely"),), "b" * 16)


def fake(*, slots: int = 2, tokens_per_s: float = 0, prefill_tokens_per_s: float = 0) -> FakeEngine:
    return FakeEngine(
        ttft_ms=0,
        tokens_per_s=tokens_per_s,
        slots=slots,
        prefill_tokens_per_s=prefill_tokens_per_s,
    )


async def answer(engine: FakeEngine, prompt: Prompt, max_tokens: int = 3) -> tuple[str, Finished]:
    text: list[str] = []
    async for item in engine.stream(prompt, SamplingParams(max_tokens=max_tokens)):
        if isinstance(item, Finished):
            return "".join(text), item
        if isinstance(item, str):
            text.append(item)
    raise AssertionError("no Finished")


def next_turn(chat: Chat, reply: str, question: str, digest: str) -> Chat:
    messages = (*chat.messages, Message("assistant", reply), Message("user", question))
    return Chat(messages, digest)


def test_fake_tokens_are_what_the_prompt_count_counts() -> None:
    assert len(fake_tokens(A)) == count_prompt_tokens(A)
    assert len(fake_tokens("once upon a time")) == count_prompt_tokens("once upon a time") == 4


async def test_a_later_turn_finds_its_history_and_the_cache_advertises_it() -> None:
    engine = fake()
    assert engine.cached_prefixes() == ()
    reply, first = await answer(engine, A)
    assert first.cached_tokens == 0
    assert engine.cached_prefixes() == (A.prefix,)
    turn = next_turn(A, reply, "and then?", "c" * 16)
    _, second = await answer(engine, turn)
    # The first prompt, then the reply's header and words, are in the slot's cache.
    assert second.cached_tokens == first.prompt_tokens + 1 + len(reply.split())
    assert second.cached_tokens < second.prompt_tokens
    assert engine.cached_prefixes() == (turn.prefix,)  # its own slot, rewritten


async def test_a_free_slot_is_chosen_by_longest_prefix_then_least_recently_used() -> None:
    engine = fake(slots=2)
    await answer(engine, A)  # slot 1
    await answer(engine, B)  # a miss: the least recently used slot, the other one
    assert engine.cached_prefixes() == (B.prefix, A.prefix)  # most recent first
    _, again = await answer(engine, A)  # finds slot 1 although slot 2 was used later
    assert again.cached_tokens == count_prompt_tokens(A) - 1
    assert engine.cached_prefixes() == (A.prefix, B.prefix)
    # A text prompt names no prefix: its slot (the least recently used, B's) advertises none.
    await answer(engine, "unrelated words here")
    assert engine.cached_prefixes() == (A.prefix,)


async def test_a_busy_slots_cache_is_not_taken() -> None:
    engine = fake(slots=2, tokens_per_s=1000.0)
    slow = asyncio.create_task(answer(engine, A, max_tokens=50))
    await asyncio.sleep(0.01)
    _, other = await answer(engine, A)  # A's slot... is busy: the other, empty one
    assert other.cached_tokens == 0
    assert (await slow)[1].cached_tokens == 0


async def test_prefill_rate_makes_time_to_first_token_grow_with_the_uncached_part() -> None:
    engine = fake(prefill_tokens_per_s=1000.0)  # 1 ms a prompt token
    uncached = count_prompt_tokens(A)  # 70 tokens: ~70 ms

    async def first_token_s(prompt: Prompt) -> float:
        started = time.monotonic()
        stream = engine.stream(prompt, SamplingParams(max_tokens=1))
        assert isinstance(stream, AsyncGenerator)
        async with aclosing(stream) as outputs:
            async for _ in outputs:
                return time.monotonic() - started
        raise AssertionError("no output")

    cold = await first_token_s(A)
    warm = await first_token_s(A)  # all but one token cached: ~1 ms
    assert cold >= uncached / 1000 * 0.9
    assert warm < cold / 5


async def test_ignore_eos_runs_past_the_natural_end_to_the_default_length() -> None:
    engine = FakeEngine(ttft_ms=0, tokens_per_s=0, default_max_tokens=40, ignore_eos=True)
    async for item in engine.stream(B, SamplingParams()):
        if isinstance(item, Finished):
            assert (item.reason, item.completion_tokens) == ("length", 40)
            return
    raise AssertionError("no Finished")
