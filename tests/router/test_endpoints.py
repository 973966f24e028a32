"""The relayed endpoints besides chat (`/v1/completions`, `/v1/embeddings`): the same dispatch
as chat (auth, model check, failover, metrics), each posted to the same path on the worker."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from contract.registry import publish_worker
from router import tenant_admin
from router.appkeys import METRICS, VIEW
from tests.waits import eventually

from .fakes import (
    MODEL,
    PLAIN_BODY,
    STREAM_FRAMES,
    TTL_MS,
    RouterFactory,
    StartWorker,
    free_port,
    make_record,
)

Client = TestClient[web.Request, web.Application]
JSON = {"Content-Type": "application/json"}
BASE_DOMAIN = "api.localtest"
BODIES: dict[str, dict[str, Any]] = {
    "/v1/completions": {"model": MODEL, "prompt": "Once upon a time"},
    "/v1/embeddings": {"model": MODEL, "input": ["a", "b"]},
}
LABELS = {"/v1/completions": "completions", "/v1/embeddings": "embeddings"}


def count(client: Client, endpoint: str, status_class: str) -> float:
    assert client.app is not None
    labels = {"endpoint": endpoint, "model": MODEL, "status_class": status_class}
    value = client.app[METRICS].registry.get_sample_value("router_requests_total", labels)
    return 0.0 if value is None else value


@pytest.mark.parametrize("path", list(BODIES))
async def test_relayed_to_the_same_path_with_its_own_label(
    path: str, start_worker: StartWorker, start_router: RouterFactory
) -> None:
    worker = await start_worker("w1")
    client = await start_router()
    body = orjson.dumps(BODIES[path])
    resp = await client.post(path, data=body, headers=JSON)
    assert resp.status == 200
    assert await resp.read() == PLAIN_BODY
    assert (worker.paths, worker.bodies) == ([path], [body])
    assert count(client, LABELS[path], "2xx") == 1
    assert count(client, "chat_completions", "2xx") == 0


async def test_a_streamed_text_completion_is_relayed_as_sse(
    start_worker: StartWorker, start_router: RouterFactory
) -> None:
    await start_worker("w1")
    client = await start_router()
    body = orjson.dumps({**BODIES["/v1/completions"], "stream": True})
    resp = await client.post("/v1/completions", data=body, headers=JSON)
    assert resp.headers["Content-Type"] == "text/event-stream"
    assert await resp.read() == b"".join(STREAM_FRAMES)


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/completions", {"model": MODEL, "prompt": ["a", "b"]}, "prompt"),
        ("/v1/completions", {"model": MODEL, "prompt": "a", "suffix": "z"}, "suffix"),
        ("/v1/embeddings", {"model": MODEL, "input": [[1, 2]]}, "input"),
        (
            "/v1/embeddings",
            {"model": MODEL, "input": "a", "encoding_format": "x"},
            "encoding_format",
        ),
    ],
)
async def test_a_bad_body_is_400_before_any_worker(
    path: str,
    body: dict[str, object],
    param: str,
    start_worker: StartWorker,
    start_router: RouterFactory,
) -> None:
    worker = await start_worker("w1")
    client = await start_router()
    resp = await client.post(path, data=orjson.dumps(body), headers=JSON)
    assert resp.status == 400
    assert orjson.loads(await resp.read())["error"]["param"] == param
    assert worker.bodies == []
    assert client.app is not None
    labels = {"endpoint": LABELS[path], "model": "other", "status_class": "4xx"}
    assert client.app[METRICS].registry.get_sample_value("router_requests_total", labels) == 1


async def test_unknown_model_is_404(start_router: RouterFactory) -> None:
    client = await start_router()
    body = {"model": "nope", "input": "a"}
    resp = await client.post("/v1/embeddings", data=orjson.dumps(body), headers=JSON)
    assert resp.status == 404
    assert orjson.loads(await resp.read())["error"]["code"] == "model_not_found"


async def test_routed_by_model_with_failover(
    start_worker: StartWorker, start_router: RouterFactory, redis: Redis[bytes]
) -> None:
    embedder = await start_worker("embed", model="embed-model", running=5)
    await start_worker("chat", model=MODEL)
    dead = make_record("dead", f"http://127.0.0.1:{free_port()}", model="embed-model")
    await publish_worker(redis, dead, TTL_MS)
    client = await start_router()
    body = orjson.dumps({"model": "embed-model", "input": "a"})
    resp = await client.post("/v1/embeddings", data=body, headers=JSON)
    assert resp.status == 200
    assert embedder.paths == ["/v1/embeddings"]
    assert client.app is not None
    retries = client.app[METRICS].registry.get_sample_value(
        "router_upstream_retries_total", {"model": "embed-model"}
    )
    assert retries == 1


async def test_path_and_dns_based_with_auth(
    start_worker: StartWorker, start_router: RouterFactory, redis: Redis[bytes]
) -> None:
    worker = await start_worker("w1")
    pid = (await tenant_admin.create_project(redis, "Dev")).project_id
    await tenant_admin.create_endpoint(redis, pid, "gen", [MODEL])
    key = (await tenant_admin.create_key(redis, pid)).key
    client = await start_router(auth=True, base_domain=BASE_DOMAIN)
    app = client.app
    assert app is not None
    await eventually(lambda: bool(app[VIEW].candidates(MODEL)))
    bearer = {**JSON, "Authorization": f"Bearer {key}"}
    dns = {**bearer, "Host": f"gen.{pid.lower()}.{BASE_DOMAIN}"}
    for path, body in BODIES.items():
        data = orjson.dumps(body)
        assert (await client.post(path, data=data, headers=JSON)).status == 401
        for url, headers in (
            (path, bearer),
            (f"/{pid}{path}", bearer),
            (f"/{pid}/gen{path}", bearer),
            (path, dns),
        ):
            resp = await client.post(url, data=data, headers=headers)
            assert resp.status == 200, (url, await resp.read())
    assert worker.paths == [p for p in BODIES for _ in range(4)]
    labels = {"project": pid, "project_endpoint": "gen", "status_class": "2xx"}
    assert app[METRICS].registry.get_sample_value("router_project_requests_total", labels) == 4
