"""Tenancy fixtures: one real redis-server per test module, flushed before each test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import pytest
from redis.asyncio import Redis

from router.registry import now_ms
from tests.processes import RedisServer


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer.create(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The URL of an empty Redis."""
    redis_server.flush()
    return redis_server.url


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis[bytes]]:
    client: Redis[bytes] = Redis.from_url(redis_url)
    yield client
    await client.aclose()  # type: ignore[attr-defined]  # types-redis predates it


@dataclass
class FakeClock:
    """Both clocks a KeyCache reads: monotonic seconds (TTLs) and wall ms (key expiry)."""

    monotonic_s: float = 1000.0
    wall: int = field(default_factory=now_ms)

    def monotonic(self) -> float:
        return self.monotonic_s

    def wall_ms(self) -> int:
        return self.wall

    def advance(self, seconds: float) -> None:
        self.monotonic_s += seconds
        self.wall += round(seconds * 1000)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
