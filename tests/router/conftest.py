"""Router test fixtures: a real redis-server per test, fake workers, and a router factory.

Fake workers are real aiohttp servers (started by aiohttp_server, which cancels a handler when
its client hangs up) registered in Redis with contract.registry.publish_worker, as a worker would.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient, AiohttpServer
from redis.asyncio import Redis

from contract.registry import WorkerState, now_ms, publish_worker
from router.app import create_app
from router.config import RouterConfig

from .fakes import MODEL, TTL_MS, FakeWorker, RedisServer, RouterFactory, StartWorker, make_record


@pytest.fixture
def start_worker(aiohttp_server: AiohttpServer, redis: Redis[bytes]) -> StartWorker:
    """Start a fake worker server and register it, as a worker's heartbeat would."""

    async def start(
        worker_id: str,
        *,
        mode: str = "ok",
        model: str = MODEL,
        running: int = 0,
        state: WorkerState = WorkerState.READY,
        slots: int = 4,
    ) -> FakeWorker:
        worker = FakeWorker(worker_id, mode)
        server = await aiohttp_server(worker.app())
        worker.url = str(server.make_url("")).rstrip("/")
        record = make_record(
            worker_id, worker.url, model=model, running=running, state=state, slots=slots
        )
        await publish_worker(redis, record, TTL_MS)
        return worker

    return start


@pytest.fixture
def start_router(aiohttp_client: AiohttpClient, redis_server: RedisServer) -> RouterFactory:
    """A router app on a test server (handler_cancellation on), configured for fast tests."""

    async def start(**overrides: Any) -> TestClient[web.Request, web.Application]:
        settings: dict[str, Any] = {
            "redis_url": redis_server.url,
            "registry_refresh_s": 0.2,
            "worker_stale_s": 30.0,
            "connect_timeout_s": 1.0,
            "read_timeout_s": 5.0,
            "auth": False,  # tenancy has its own tests (test_access.py)
        }
        settings.update(overrides)
        app = create_app(RouterConfig(**settings))
        return await aiohttp_client(app)

    return start


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The URL of this test's empty Redis."""
    return redis_server.url


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
