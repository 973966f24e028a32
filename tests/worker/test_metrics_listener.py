"""The metrics port: /metrics only there (and /health on both), the API port without it."""

from __future__ import annotations

import aiohttp
import pytest

from tests.processes import free_port
from worker.config import ConfigError, load_config

from .conftest import MODEL, StartWorker

CHAT = "/v1/chat/completions"


async def test_metrics_move_to_their_own_port(start_worker: StartWorker) -> None:
    port = free_port()
    client = await start_worker(metrics_port=port, secret="only-routers")
    # On the API port /metrics is no route at all (401 first: the secret guards every route).
    assert (await client.get("/metrics")).status == 401
    response = await client.get("/metrics", headers={"Authorization": "Bearer only-routers"})
    assert response.status == 404
    assert (await client.get("/health")).status == 200

    async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as scraper:
        async with scraper.get("/metrics") as scrape:  # no secret needed
            assert scrape.status == 200
            assert "worker_http_requests" in await scrape.text()
        async with scraper.get("/health") as health:
            assert health.status == 200
            assert (await health.json())["model"] == MODEL
        async with scraper.post(CHAT, json={}) as chat:
            assert chat.status == 404  # the API is not served here


async def test_without_a_metrics_port_metrics_stay_on_the_api_port(
    start_worker: StartWorker,
) -> None:
    client = await start_worker()
    response = await client.get("/metrics")
    assert response.status == 200
    assert "worker_http_requests" in await response.text()


def test_the_metrics_port_must_differ_from_the_api_port() -> None:
    base = ["--model-id", MODEL, "--redis-url", "redis://127.0.0.1:1", "--engine", "fake"]
    assert load_config([*base, "--metrics-port", "9100"], {}).metrics_port == 9100
    assert load_config(base, {"WORKER_METRICS_PORT": "9101"}).metrics_port == 9101
    assert load_config(base, {}).metrics_port is None
    with pytest.raises(ConfigError, match="--metrics-port: must differ"):
        load_config([*base, "--port", "9001", "--metrics-port", "9001"], {})
