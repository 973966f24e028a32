"""Fixtures every suite shares."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from tests.processes import RedisServer


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A throwaway redis-server for one test (suites may override with a wider scope)."""
    server = RedisServer.create(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis[bytes]]:
    client: Redis[bytes] = Redis.from_url(redis_server.url)
    yield client
    await client.aclose()  # type: ignore[attr-defined]  # types-redis predates it
