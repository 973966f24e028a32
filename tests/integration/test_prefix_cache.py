"""Issue 13's proof on the worker side, against real processes (redis-server, router, workers):
a repeated conversation reports `prompt_tokens_details.cached_tokens` > 0 through the openai SDK,
the worker's registry record advertises the prefix it holds, and a restarted worker's record
holds none within one heartbeat."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import openai
import pytest
from redis.asyncio import Redis

from benchmarks.processes import router_sees
from contract.prefixes import boundaries
from contract.registry import WorkerRecord, read_snapshot
from tests.processes import (
    MODEL_ID,
    RedisServer,
    router_process,
    wait_until,
    worker_process,
)

HEARTBEAT_S = 0.2
FIRST: list[Any] = [
    {"role": "system", "content": "You are a helpful assistant. Answer in one short sentence."},
    {"role": "user", "content": "What is the capital of France?"},
]


class Stack:
    """redis-server, one worker, one router, as processes."""

    def __init__(self, tmp: Path, engine: str) -> None:
        self.redis = RedisServer.create(tmp)
        extra = ("--heartbeat-interval-s", str(HEARTBEAT_S))
        self.worker = worker_process(tmp, self.redis.url, "w0", engine=engine, extra=extra)
        self.router = router_process(tmp, self.redis.url)

    def start(self) -> None:
        self.redis.start()
        for service in (self.worker, self.router):
            service.start()
        for service in (self.worker, self.router):
            service.wait_healthy(timeout_s=120)
        wait_until(lambda: router_sees(self.router.url, 1), 10, "the router to see the worker")

    def stop(self) -> None:
        for service in (self.router, self.worker, self.redis):
            service.stop()

    def record(self) -> WorkerRecord:
        async def read() -> WorkerRecord:
            redis: Redis[bytes] = Redis.from_url(self.redis.url)
            try:
                return (await read_snapshot(redis)).workers["w0"]
            finally:
                await redis.aclose()  # type: ignore[attr-defined]  # types-redis predates it

        return asyncio.run(read())

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=self.router.url + "/v1", api_key="none", max_retries=0, timeout=120
        )


@contextmanager
def running(tmp: Path, engine: str) -> Iterator[Stack]:
    stack = Stack(tmp, engine)
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


Usage = openai.types.CompletionUsage


def two_turns(stack: Stack) -> tuple[Usage, Usage, list[Any]]:
    """A conversation's two turns, the second repeating the first and its reply; and the
    second's messages."""
    with stack.client() as client:
        first = client.chat.completions.create(
            model=MODEL_ID, messages=FIRST, temperature=0, max_tokens=8
        )
        reply = {"role": "assistant", "content": first.choices[0].message.content}
        later = [*FIRST, reply, {"role": "user", "content": "And of Italy?"}]
        second = client.chat.completions.create(
            model=MODEL_ID, messages=later, temperature=0, max_tokens=4
        )
    assert first.usage is not None and second.usage is not None
    return first.usage, second.usage, later


def cached(usage: Usage) -> int:
    assert usage.prompt_tokens_details is not None  # always there, as OpenAI sends it
    assert usage.prompt_tokens_details.cached_tokens is not None
    return usage.prompt_tokens_details.cached_tokens


def held_after(stack: Stack, digest: str) -> bool:
    return digest in stack.record().prefixes


@pytest.fixture
def fake_stack(tmp_path: Path) -> Iterator[Stack]:
    with running(tmp_path, "fake") as stack:
        yield stack


def test_a_repeated_conversation_is_cached_and_advertised_fake(fake_stack: Stack) -> None:
    first, second, later = two_turns(fake_stack)
    assert cached(first) == 0
    assert 0 < cached(second) < second.prompt_tokens
    assert cached(second) >= first.prompt_tokens
    # The record names the second turn's prompt as a router hashes it; one slot, so only it.
    digest = boundaries(later)[-1].digest
    wait_until(lambda: fake_stack.record().prefixes == (digest,), 2, "the advertisement")


def test_a_restarted_worker_advertises_nothing_within_one_heartbeat(fake_stack: Stack) -> None:
    two_turns(fake_stack)
    digest = boundaries(FIRST)[-1].digest
    with fake_stack.client() as client:
        client.chat.completions.create(model=MODEL_ID, messages=FIRST, max_tokens=2)
    wait_until(lambda: held_after(fake_stack, digest), 2, "the record to advertise the prefix")
    # Killed, not stopped: its record, prefixes and all, outlives it until the TTL or a restart.
    fake_stack.worker.kill()
    assert fake_stack.record().prefixes == (digest,)
    fake_stack.worker.start()
    fake_stack.worker.wait_healthy(timeout_s=30)
    healthy = time.monotonic()
    wait_until(lambda: fake_stack.record().prefixes == (), HEARTBEAT_S, "an empty advertisement")
    assert time.monotonic() - healthy <= HEARTBEAT_S


@pytest.mark.llama
@pytest.mark.parametrize("engine", ["llama", "batched"])
def test_a_repeated_conversation_is_cached_on_the_real_model(tmp_path: Path, engine: str) -> None:
    pytest.importorskip("llama_cpp", reason="the real model needs llama-cpp-python")
    with running(tmp_path, engine) as stack:
        first, second, later = two_turns(stack)
        assert 0 < cached(second) < second.prompt_tokens
        assert cached(second) >= first.prompt_tokens // 2
        digest = boundaries(later)[-1].digest
        wait_until(lambda: digest in stack.record().prefixes, 2, "the advertisement")
