"""The batched engine's prompt caches on the real model (CPU): a conversation finds its
history in the slot it left or, restored, in host RAM, and gets the tokens it would get by
reading its prompt afresh; `cached_prefixes` names what is held; `ignore_eos`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import pytest

from contract.wire import Message, SamplingParams
from worker.engine import Chat, Finished

from .real_model import real_model_path

pytest.importorskip("llama_cpp", reason="needs llama-cpp-python")
pytestmark = pytest.mark.llama

from worker.batched_engine import BatchedLlamaEngine  # noqa: E402 (llama_cpp)

MODEL_PATH = real_model_path()
GREEDY = SamplingParams(max_tokens=24, temperature=0.0)
A = Chat(
    (
        Message("system", "You are a helpful assistant who answers briefly."),
        Message("user", "Write a haiku about the sea."),
    ),
    "a" * 16,
)
B = Chat(
    (Message("system", "Talk like a pirate."), Message("user", "Where is the gold?")), "b" * 16
)
C = Chat((Message("system", "You are a poet."), Message("user", "Rhyme with cat.")), "c" * 16)


async def engine_with(**kwargs: int | bool) -> BatchedLlamaEngine:
    engine = BatchedLlamaEngine(MODEL_PATH, n_ctx=256, n_threads=2, prefill_chunk=16, **kwargs)  # type: ignore[arg-type]
    await engine.load()
    return engine


async def answer(
    engine: BatchedLlamaEngine, messages: Sequence[Message], params: SamplingParams = GREEDY
) -> tuple[str, Finished]:
    deltas: list[str] = []
    async for item in engine.stream(messages, params):
        if isinstance(item, Finished):
            return "".join(deltas), item
        if isinstance(item, str):
            deltas.append(item)
    raise AssertionError("no Finished")


@pytest.fixture
async def one_slot() -> AsyncIterator[BatchedLlamaEngine]:
    engine = await engine_with(slots=1)
    yield engine
    await engine.close()


async def test_a_restored_state_gives_the_tokens_of_a_fresh_read(
    one_slot: BatchedLlamaEngine,
) -> None:
    """One slot: B overwrites A's cache (saved to host RAM first); A again is restored from
    there, reads only its last 2 tokens, and answers as when it read its whole prompt."""
    fresh = await answer(one_slot, A)
    assert fresh[1].cached_tokens == 0
    await answer(one_slot, B)
    assert one_slot.cached_prefixes() == (B.prefix, A.prefix)
    restored = await answer(one_slot, A)
    assert restored[1].cached_tokens == restored[1].prompt_tokens - 2
    assert restored[0] == fresh[0]
    assert restored[1].completion_tokens == fresh[1].completion_tokens
    assert one_slot.cached_prefixes()[0] == A.prefix


async def test_without_the_host_cache_the_history_is_read_again() -> None:
    engine = await engine_with(slots=1, prompt_cache_mib=0)
    try:
        await answer(engine, A)
        await answer(engine, B)
        assert engine.cached_prefixes() == (B.prefix,)
        _, again = await answer(engine, A)
        assert again.cached_tokens < 8  # the chat template's first tokens at most
    finally:
        await engine.close()


async def test_a_conversation_returns_to_the_slot_it_left() -> None:
    """Two slots, no host cache: A, then B (into the least recently used slot, not A's),
    then A's next turn finds its first turn in its slot; a new chat C evicts B's (LRU)."""
    engine = await engine_with(slots=2, prompt_cache_mib=0)
    try:
        reply, first = await answer(engine, A)
        await answer(engine, B)
        later = Chat((*A, Message("assistant", reply), Message("user", "Another.")), "d" * 16)
        _, second = await answer(engine, later)
        assert second.cached_tokens >= first.prompt_tokens
        await answer(engine, C)
        assert engine.cached_prefixes() == (C.prefix, later.prefix)
    finally:
        await engine.close()


async def test_concurrent_conversations_match_a_cold_engine() -> None:
    """Five chats on two slots with host RAM, twice over: the second round restores states
    saved in the first, and every answer is the one an engine with no cache gives."""
    chats = [
        Chat((Message("system", f"You are {name}, and you like {thing}."), Message("user", q)))
        for name, thing, q in [
            ("Ada, a mathematician", "numbers and engines", "Hi."),
            ("Bob, a builder", "bricks, cement and tall towers", "Name a colour."),
            ("Cy, a cyclist", "long rides in the mountains", "Count to three."),
            ("Di, a diver", "coral reefs and quiet fish", "Say yes."),
            ("Ed, an editor", "commas, footnotes and short words", "Why?"),
        ]
    ]
    cold = await engine_with(slots=2, prompt_cache_mib=0)
    try:
        expected = [await answer(cold, c) for c in chats]
    finally:
        await cold.close()
    engine = await engine_with(slots=2)
    try:
        await asyncio.gather(*(answer(engine, c) for c in chats))
        again = await asyncio.gather(*(answer(engine, c) for c in chats))
    finally:
        await engine.close()
    assert [text for text, _ in again] == [text for text, _ in expected]
    assert all(f.cached_tokens == f.prompt_tokens - 2 for _, f in again)


async def test_ignore_eos_generates_exactly_max_tokens() -> None:
    short = SamplingParams(max_tokens=60, temperature=0.0)
    engine = await engine_with(slots=1)
    try:
        _, stopped = await answer(engine, C, short)
    finally:
        await engine.close()
    assert stopped.reason == "stop" and stopped.completion_tokens < 60
    engine = await engine_with(slots=1, ignore_eos=True)
    try:
        _, full = await answer(engine, C, short)
    finally:
        await engine.close()
    assert (full.reason, full.completion_tokens) == ("length", 60)
