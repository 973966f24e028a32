"""The worker secret: where it comes from, who is refused, and how refusals are logged."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from worker.auth import RefusalLog
from worker.config import load_config

from .conftest import MODEL, StartWorker

CHAT = "/v1/chat/completions"
SECRET = "s3cret-for-the-routers-only"
BASE = ["--model-id", MODEL, "--redis-url", "redis://127.0.0.1:1", "--engine", "fake"]


def hello() -> dict[str, object]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def test_the_config_holds_the_path_never_the_secret(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text(SECRET)
    config = load_config([*BASE, "--worker-secret-file", str(path)], {})
    assert config.worker_secret_file == str(path)
    assert SECRET not in repr(config)
    from_env = load_config(BASE, {"WORKER_WORKER_SECRET_FILE": str(path)})
    assert from_env.worker_secret_file == str(path)


def test_refusals_are_logged_at_most_once_an_interval(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    log = RefusalLog(interval_s=10, clock=lambda: now[0])

    caplog.set_level(logging.WARNING, "worker.auth")
    logged = [log.refused("POST", CHAT, "10.0.0.9") for _ in range(50)]
    now[0] += 10
    logged.append(log.refused("POST", CHAT, "10.0.0.9"))
    assert logged == [True] + [False] * 49 + [True]
    assert len(caplog.records) == 2
    assert "49 more refused" in caplog.records[1].getMessage()
    assert "10.0.0.9" in caplog.records[0].getMessage()


async def test_a_worker_with_a_secret_serves_only_requests_that_carry_it(
    start_worker: StartWorker, caplog: pytest.LogCaptureFixture
) -> None:
    client = await start_worker(secret=SECRET)
    caplog.set_level(logging.WARNING, "worker.auth")

    for headers in ({}, bearer("wrong"), {"Authorization": SECRET}, bearer(SECRET + "x")):
        response = await client.post(CHAT, json=hello(), headers=headers)
        assert response.status == 401
        error = (await response.json())["error"]
        assert (error["type"], error["code"]) == ("invalid_request_error", "invalid_api_key")
    assert (await client.get("/v1/models")).status == 401
    assert (await client.get("/no/such/route")).status == 401  # nothing is told about routes
    assert any("refused POST" in r.getMessage() for r in caplog.records)
    assert all(SECRET not in r.getMessage() for r in caplog.records)

    assert (await client.post(CHAT, json=hello(), headers=bearer(SECRET))).status == 200
    # Probes and scrapers need no secret.
    assert (await client.get("/health")).status == 200
    assert (await client.get("/metrics")).status == 200


async def test_a_worker_without_a_secret_is_open_and_says_so(
    start_worker: StartWorker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "worker.app")
    client = await start_worker()
    assert (await client.post(CHAT, json=hello())).status == 200
    warnings = [r.getMessage() for r in caplog.records if r.name == "worker.app"]
    assert len(warnings) == 1
    assert "anything that can reach" in warnings[0]
