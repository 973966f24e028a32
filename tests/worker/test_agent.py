"""The registrar (worker.agent) against a fake llama-server (a real aiohttp server) and a real
redis-server: the record it keeps, its load and health, the drain and deregistration."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer
from redis.asyncio import Redis

from contract.options import ConfigError
from contract.registry import WorkerApi, WorkerRecord, WorkerState, read_snapshot
from tests.processes import RedisServer
from tests.waits import eventually
from worker.agent import AgentConfig, load_config, serve


@dataclass
class FakeLlamaServer:
    slots: int = 3
    busy: int = 0
    healthy: bool = True
    auth: str | None = None  # the Authorization header /slots last saw

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_get("/slots", self._slots)
        return app

    async def _health(self, request: web.Request) -> web.Response:
        if not self.healthy:
            return web.json_response({"error": {"message": "Loading model"}}, status=503)
        return web.json_response({"status": "ok"})

    async def _slots(self, request: web.Request) -> web.Response:
        self.auth = request.headers.get("Authorization")
        return web.json_response(
            [{"id": i, "is_processing": i < self.busy} for i in range(self.slots)]
        )


@dataclass
class Running:
    server: FakeLlamaServer
    stop: asyncio.Event
    task: asyncio.Task[None]


def config(url: str, redis_url: str, **extra: Any) -> AgentConfig:
    return AgentConfig(
        upstream=url,
        model_id="smol",
        redis_url=redis_url,
        worker_id="agent-1",
        heartbeat_interval_s=0.05,
        heartbeat_ttl_s=1.0,
        drain_timeout_s=5.0,
        **extra,
    )


@pytest.fixture
async def agent(aiohttp_server: AiohttpServer, redis_server: RedisServer) -> AsyncIterator[Running]:
    fake = FakeLlamaServer()
    url = str((await aiohttp_server(fake.app())).make_url("")).rstrip("/")
    stop = asyncio.Event()
    task = asyncio.create_task(serve(config(url, redis_server.url), "s3cret", stop))
    yield Running(fake, stop, task)
    stop.set()
    await asyncio.wait_for(task, 10)


async def record(redis: Redis[bytes]) -> WorkerRecord | None:
    return (await read_snapshot(redis)).workers.get("agent-1")


async def registered(redis: Redis[bytes]) -> bool:
    return await record(redis) is not None


async def test_it_registers_the_server_with_its_slots_and_load(
    agent: Running, redis: Redis[bytes]
) -> None:
    await eventually(lambda: registered(redis), timeout_s=5)
    got = await record(redis)
    assert got is not None
    assert (got.api, got.slots, got.state, got.model) == (
        WorkerApi.OPENAI,
        3,
        WorkerState.READY,
        "smol",
    )
    assert agent.server.auth == "Bearer s3cret"  # llama-server guards /slots with --api-key
    agent.server.busy = 2

    async def busy() -> bool:
        now = await record(redis)
        return now is not None and now.running == 2

    await eventually(busy, timeout_s=5)


async def test_an_unhealthy_server_is_draining_until_it_recovers(
    agent: Running, redis: Redis[bytes]
) -> None:
    await eventually(lambda: registered(redis), timeout_s=5)

    async def state_is(state: WorkerState) -> bool:
        now = await record(redis)
        return now is not None and now.state is state

    agent.server.healthy = False
    await eventually(lambda: state_is(WorkerState.DRAINING), timeout_s=5)
    agent.server.healthy = True
    await eventually(lambda: state_is(WorkerState.READY), timeout_s=5)


async def test_stop_waits_for_busy_slots_then_deregisters(
    agent: Running, redis: Redis[bytes]
) -> None:
    await eventually(lambda: registered(redis), timeout_s=5)
    agent.server.busy = 1
    await asyncio.sleep(0.3)
    agent.stop.set()

    async def draining() -> bool:
        now = await record(redis)
        return now is not None and now.state is WorkerState.DRAINING

    await eventually(draining, timeout_s=5)
    assert not agent.task.done()  # a slot is still busy
    agent.server.busy = 0
    await asyncio.wait_for(agent.task, 5)
    assert await record(redis) is None


def test_config_defaults_and_refusals() -> None:
    env = {"REDIS_URL": "redis://127.0.0.1:1/0"}
    got = load_config(["--upstream", "http://127.0.0.1:8080/", "--model-id", "m"], env)
    assert got.advertise_url == "http://127.0.0.1:8080"
    assert got.worker_id.startswith("127.0.0.1-8080-")
    assert got.kind == "llama-server"
    for bad in (["--kind", "vllm"], ["--slots", "0"], ["--upstream", "ftp://x"]):
        with pytest.raises(ConfigError):
            load_config(["--upstream", "http://127.0.0.1:8080", "--model-id", "m", *bad], env)
