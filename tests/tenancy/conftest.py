"""Tenancy fixtures: one real redis-server per test module, flushed before each test."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import pytest
import redis as redis_sync
from redis.asyncio import Redis

from router.registry import now_ms

REDIS_SERVER = "/usr/bin/redis-server"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 5
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                return
            if time.monotonic() > deadline or self._proc.poll() is not None:
                self.stop()
                raise RuntimeError("redis-server did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.kill()  # by PID: only the server this fixture started
            self._proc.wait(5)
            self._proc = None

    def flush(self) -> None:
        with redis_sync.Redis.from_url(self.url) as client:
            client.flushall()
            client.script_flush()
            client.config_resetstat()


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
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
