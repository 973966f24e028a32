"""Wiring: which engine a config builds, and the order resources come up and go down in."""

from __future__ import annotations

from collections.abc import AsyncIterator

from redis.asyncio import Redis

from contract.registry import read_snapshot
from contract.wire import SamplingParams
from worker import appkeys
from worker.app import build_engine
from worker.engine import OnPrompt, Output, Prompt
from worker.fake_engine import FakeEngine

from .conftest import StartWorker, fake_config


def test_the_fake_engine_takes_its_timing_and_shape_from_the_config() -> None:
    engine = build_engine(fake_config("redis://127.0.0.1:1", n_ctx=512, slots=3))
    assert isinstance(engine, FakeEngine)
    assert (engine.n_ctx, engine.slots) == (512, 3)


class WitnessEngine(FakeEngine):
    """Looks in the registry when it loads and when it closes."""

    def __init__(self, redis: Redis[bytes], worker_id: str) -> None:
        super().__init__(ttft_ms=0, tokens_per_s=0, slots=2)
        self.redis, self.worker_id = redis, worker_id
        self.registered_at: dict[str, bool] = {}

    async def registered(self) -> bool:
        return self.worker_id in (await read_snapshot(self.redis)).workers

    async def load(self) -> None:
        self.registered_at["load"] = await self.registered()

    async def close(self) -> None:
        self.registered_at["close"] = await self.registered()

    async def stream(
        self, messages: Prompt, params: SamplingParams, on_prompt: OnPrompt | None = None
    ) -> AsyncIterator[Output]:
        async for item in super().stream(messages, params, on_prompt):
            yield item


async def test_registers_after_the_model_loads_and_closes_it_after_leaving(
    start_worker: StartWorker, redis_url: str
) -> None:
    redis: Redis[bytes] = Redis.from_url(redis_url)
    try:
        engine = WitnessEngine(redis, "w-order")
        client = await start_worker(engine, worker_id="w-order")
        assert engine.registered_at == {"load": False}
        assert await engine.registered()
        assert client.app[appkeys.SLOTS].slots == 2  # the slot queue follows the engine
        await client.close()
        assert engine.registered_at == {"load": False, "close": False}
    finally:
        await redis.aclose()  # type: ignore[attr-defined]  # types-redis predates it
