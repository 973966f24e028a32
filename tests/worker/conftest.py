"""Worker test fixtures: one real redis-server per module, a worker-app factory, and an engine
that fails on purpose."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from contract.wire import SamplingParams
from tests.processes import RedisServer
from worker.app import create_app
from worker.config import WorkerConfig
from worker.engine import Engine, Finished, OnPrompt, Prompt
from worker.fake_engine import FakeEngine

MODEL = "fake-model"

WorkerClient = TestClient[web.Request, web.Application]
StartWorker = Callable[..., Awaitable[WorkerClient]]


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp: Path = tmp_path_factory.mktemp("redis")
    server = RedisServer.create(tmp)
    server.start()
    yield server.url
    server.stop()


def fake_config(redis_url: str, **overrides: Any) -> WorkerConfig:
    settings: dict[str, Any] = {
        "model_id": MODEL,
        "redis_url": redis_url,
        "engine": "fake",
        "fake_ttft_ms": 0.0,
        "fake_tokens_per_s": 0.0,
        "heartbeat_interval_s": 0.1,
        "heartbeat_ttl_s": 1.0,
        "drain_timeout_s": 2.0,
    }
    settings.update(overrides)
    return WorkerConfig(**settings)


@pytest.fixture
def start_worker(aiohttp_client: AiohttpClient, redis_url: str) -> StartWorker:
    """A worker app on a test server (handler_cancellation on); torn down by the fixture."""

    async def start(
        engine: Engine | None = None, *, secret: str | None = None, **overrides: Any
    ) -> WorkerClient:
        config = fake_config(overrides.pop("redis_url", redis_url), **overrides)
        return await aiohttp_client(create_app(config, engine, secret=secret))

    return start


class RefusingEngine(FakeEngine):
    """Raises `error` before its first output, or after one piece of text."""

    def __init__(self, error: Exception, *, after_text: bool = False) -> None:
        super().__init__(ttft_ms=0, tokens_per_s=0)
        self.error = error
        self.after_text = after_text

    async def stream(
        self, messages: Prompt, params: SamplingParams, on_prompt: OnPrompt | None = None
    ) -> AsyncIterator[str | Finished]:
        if self.after_text:
            yield " partial"
        raise self.error
