"""Two deployments on one Redis (same database): production with the empty prefix (today's key
names) and staging with `--redis-prefix staging:`. Each router sees only its own workers, in
/health and /v1/models, and never sends a request to the other deployment's worker, though both
serve the same model."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.processes import http_json, router_sees, wait_until
from tests.processes import MODEL_ID, HttpService, RedisServer, router_process, worker_process

from .services import CHAT, post_chat, running, sample, scrape

STAGING_ONLY = "staging-only-model"
REQUESTS = 8


def _worker(tmp: Path, redis_url: str, name: str, prefix: str, model: str) -> HttpService:
    extra = ("--redis-prefix", prefix, "--model-id", model)
    return worker_process(tmp, redis_url, name, engine="fake", extra=extra)


def _chats(worker: HttpService) -> float:
    """The chat completions this worker answered (its own /metrics)."""
    text = scrape(worker.url)
    return sample(text, "worker_http_requests_total", route=CHAT, status_class="2xx")


def _models(router: HttpService) -> list[str]:
    status, body = http_json(router.url + "/v1/models")
    assert status == 200
    return sorted(m["id"] for m in body["data"])


@pytest.mark.timeout(90)
def test_two_prefixes_on_one_redis_see_and_use_only_their_own_workers(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    url = redis_server.url
    prod_worker = _worker(tmp_path, url, "prod-w", "", MODEL_ID)
    staging_worker = _worker(tmp_path, url, "staging-w", "staging:", MODEL_ID)
    staging_extra = _worker(tmp_path, url, "staging-x", "staging:", STAGING_ONLY)
    prod = router_process(tmp_path, url, "prod-router")
    staging = router_process(tmp_path, url, "staging-router", ("--redis-prefix", "staging:"))
    with running(prod_worker, staging_worker, staging_extra, prod, staging):
        wait_until(lambda: router_sees(staging.url, 2), 10, "staging to see its two workers")
        wait_until(lambda: router_sees(prod.url, 1), 10, "production to see its worker")
        assert _models(prod) == [MODEL_ID]
        assert _models(staging) == sorted([MODEL_ID, STAGING_ONLY])
        status, body = post_chat(prod.url, STAGING_ONLY)
        assert status == 404 and body["error"]["code"] == "model_not_found"

        before = {w.name: _chats(w) for w in (prod_worker, staging_worker)}
        for router in (prod, staging):
            for _ in range(REQUESTS):
                status, body = post_chat(router.url)
                assert status == 200, body
        after = {w.name: _chats(w) for w in (prod_worker, staging_worker)}
        assert {name: after[name] - before[name] for name in after} == {
            "prod-w": REQUESTS,
            "staging-w": REQUESTS,
        }
        # Still apart after several heartbeats and full reads.
        assert router_sees(prod.url, 1) and router_sees(staging.url, 2)
