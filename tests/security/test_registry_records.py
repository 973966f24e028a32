"""One bad registry record must not break any router: a worker advertising
`http://127.0.0.1:99999`, a record with fields missing, and malformed events on the channel are
skipped, logged once and counted, while the running router keeps serving the good worker with a
fresh registry, and a router started afterwards comes up and serves. A worker refuses to start
with such an advertise URL in the first place."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from benchmarks.processes import REPO_ROOT, free_port, http_json, router_sees, wait_until
from contract.registry import (
    EVENTS_CHANNEL,
    WORKERS_KEY,
    Event,
    EventType,
    WorkerRecord,
    WorkerState,
    model_workers_key,
    now_ms,
    worker_key,
)
from tests.processes import MODEL_ID, HttpService, RedisServer, router_process, worker_process

from .services import post_chat, running, sample, scrape

BAD_URL = "http://127.0.0.1:99999"
REFRESH_S = 0.2  # the routers' full re-read period: staleness should stay about this small


def _router(tmp: Path, redis_url: str, name: str) -> tuple[HttpService, str]:
    """A router (auth off) re-reading the registry every REFRESH_S; it and its metrics URL."""
    metrics_port = free_port()
    extra = ("--registry-refresh-s", str(REFRESH_S), "--metrics-port", str(metrics_port))
    return router_process(tmp, redis_url, name, extra), f"http://127.0.0.1:{metrics_port}"


def _plant_bad_records(client: redis.Redis[bytes]) -> None:
    """What a buggy or hostile writer of the registry could leave there, without a TTL: first
    the records (full reads meet them), a few reads later the events."""
    now = now_ms()
    evil = WorkerRecord(
        "evil", MODEL_ID, BAD_URL, WorkerState.READY, 64, 0, 0, 64, "cpu", now, now
    )  # every field well-formed but the port; built here, it is never validated
    client.hset(worker_key("evil"), mapping=evil.to_hash())  # type: ignore[arg-type]
    client.hset(worker_key("partial"), mapping={"worker_id": "partial", "model": MODEL_ID})
    client.sadd(WORKERS_KEY, "evil", "partial")
    client.sadd(model_workers_key(MODEL_ID), "evil", "partial")
    time.sleep(3 * REFRESH_S)
    client.publish(EVENTS_CHANNEL, Event(EventType.JOIN, "evil", evil).encode())
    client.publish(EVENTS_CHANNEL, b"not json")
    client.publish(EVENTS_CHANNEL, b'{"type": "join", "worker_id": "x", "worker": {"a": 1}}')


def _serves_freshly(router: HttpService) -> None:
    """The router serves the good worker, sees it alone, and its last full read is recent."""
    for _ in range(5):
        status, body = post_chat(router.url)
        assert status == 200, body
    time.sleep(5 * REFRESH_S)
    status, health = http_json(router.url + "/health")
    assert status == 200
    assert health["workers"] == 1
    assert health["registry_age_s"] is not None and health["registry_age_s"] < 4 * REFRESH_S


@pytest.mark.timeout(90)
def test_a_bad_record_disturbs_no_router(redis_server: RedisServer, tmp_path: Path) -> None:
    worker = worker_process(tmp_path, redis_server.url, "good", engine="fake")
    router, router_metrics = _router(tmp_path, redis_server.url, "router")
    late, _ = _router(tmp_path, redis_server.url, "late")
    client: redis.Redis[bytes] = redis.Redis.from_url(redis_server.url)
    with running(worker, router), client:
        wait_until(lambda: router_sees(router.url, 1), 10, "the router to see the worker")
        _plant_bad_records(client)

        _serves_freshly(router)  # the running router
        with running(late):  # a router started with the bad records in place
            wait_until(lambda: router_sees(late.url, 1), 10, "the late router to see the worker")
            _serves_freshly(late)

        text = scrape(router_metrics)
        skipped_reads = sample(text, "router_registry_invalid_records_total", source="read")
        assert skipped_reads >= 2  # evil and partial, again at every full read
        assert sample(text, "router_registry_invalid_records_total", source="events") == 3
        assert sample(text, "router_registry_errors_total") == 0  # Redis itself was fine
        lines = [line for line in router.log().splitlines() if "skipped an invalid" in line]
        # Logged once per worker, not once per full read.
        assert sum("worker 'evil'" in line for line in lines) == 1, lines
        assert sum("worker 'partial'" in line for line in lines) == 1, lines


def test_a_worker_refuses_to_advertise_a_url_routers_cannot_parse(
    redis_server: RedisServer,
) -> None:
    argv = [sys.executable, "-m", "worker", "--model-id", MODEL_ID, "--engine", "fake"]
    argv += ["--redis-url", redis_server.url, "--advertise-url", BAD_URL]
    done = subprocess.run(
        argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 2
    assert "--advertise-url: does not parse" in done.stderr
    with redis.Redis.from_url(redis_server.url) as client:
        assert not client.keys("*")
