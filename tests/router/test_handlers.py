"""The router app end to end, against fake workers (real aiohttp servers) and a real Redis."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest
from aiohttp import ClientResponse, ClientTimeout, web
from aiohttp.test_utils import TestClient
from openai import AsyncOpenAI
from pytest_aiohttp import AiohttpClient
from redis.asyncio import Redis

from contract.registry import WorkerState, publish_worker, remove_worker
from router.app import create_app
from router.appkeys import METRICS, VIEW
from router.config import RouterConfig
from tests.waits import eventually

from .fakes import (
    MODEL,
    PLAIN_BODY,
    STREAM_FRAMES,
    TTL_MS,
    RedisServer,
    RouterFactory,
    StartWorker,
    free_port,
    make_record,
)

CHAT = "/v1/chat/completions"
JSON_HEADERS = {"Content-Type": "application/json"}


def chat_body(model: str = MODEL, **extra: object) -> bytes:
    return orjson.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}], **extra})


def app_of(client: TestClient[web.Request, web.Application]) -> web.Application:
    assert client.app is not None
    return client.app


def sample(client: TestClient[web.Request, web.Application], name: str, **labels: str) -> float:
    value = app_of(client)[METRICS].registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def error_of(resp: ClientResponse) -> dict[str, object]:
    assert resp.content_type == "application/json"
    body = orjson.loads(await resp.read())
    assert set(body["error"]) == {"message", "type", "param", "code"}
    error: dict[str, object] = body["error"]
    return error


async def test_plain_relay_is_byte_exact(
    start_worker: StartWorker, start_router: RouterFactory
) -> None:
    worker = await start_worker("w1")
    client = await start_router()
    # Odd spacing, key order and escapes: the worker must get these very bytes.
    sent = b'{"messages":[{"content":"h\\u00e9 \xc3\xa9","role":"user"}],  "model":"smollm2-135m"}'
    resp = await client.post(CHAT, data=sent, headers=JSON_HEADERS)
    assert resp.status == 200
    assert await resp.read() == PLAIN_BODY
    assert resp.content_type == "application/json"
    assert worker.bodies == [sent]
    request_id = resp.headers["X-Request-Id"]
    assert len(request_id) == 32
    assert worker.headers[0]["X-Request-Id"] == request_id
    assert "Authorization" not in worker.headers[0]
    assert sample(client, "router_requests_total", endpoint="chat_completions", model=MODEL,
                  status_class="2xx") == 1  # fmt: skip
    assert app_of(client)[VIEW].upstreams["w1"].in_flight == 0


async def test_stream_relay_is_byte_exact(
    start_worker: StartWorker, start_router: RouterFactory
) -> None:
    await start_worker("w1")
    client = await start_router()
    resp = await client.post(
        CHAT, data=chat_body(stream=True), headers={**JSON_HEADERS, "X-Request-Id": "my-id 1"}
    )
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/event-stream"
    assert resp.headers["Cache-Control"] == "no-cache"
    assert resp.headers["X-Accel-Buffering"] == "no"
    assert resp.headers["X-Request-Id"] == "my-id 1"
    assert "Content-Length" not in resp.headers
    assert await resp.read() == b"".join(STREAM_FRAMES)
    assert sample(client, "router_inter_chunk_gap_seconds_count", model=MODEL) > 0


async def test_unknown_model_is_404(start_router: RouterFactory) -> None:
    client = await start_router()
    resp = await client.post(CHAT, data=chat_body("no-such-model"), headers=JSON_HEADERS)
    assert resp.status == 404
    error = await error_of(resp)
    assert (error["code"], error["param"]) == ("model_not_found", "model")
    assert "X-Request-Id" in resp.headers
    assert sample(client, "router_rejections_total", reason="model_not_found") == 1


async def test_known_model_with_no_worker_up_is_503(
    start_worker: StartWorker, start_router: RouterFactory, redis: Redis[bytes]
) -> None:
    await start_worker("w1")
    await remove_worker(redis, "w1", MODEL)
    await start_worker("w2", state=WorkerState.DRAINING)
    client = await start_router()
    resp = await client.post(CHAT, data=chat_body(), headers=JSON_HEADERS)
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "1"
    assert (await error_of(resp))["type"] == "service_unavailable"


@pytest.mark.parametrize(
    ("data", "param"),
    [
        (b'{"model": "smollm2-135m"}', "messages"),
        (b'{"messages": [{"role": "user", "content": "hi"}]}', "model"),
        (chat_body(temperature=3), "temperature"),
        (b"{not json", None),
    ],
)
async def test_invalid_request_is_400_with_param(
    start_router: RouterFactory, data: bytes, param: str | None
) -> None:
    client = await start_router()
    resp = await client.post(CHAT, data=data, headers=JSON_HEADERS)
    assert resp.status == 400
    error = await error_of(resp)
    assert (error["type"], error["param"]) == ("invalid_request_error", param)


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "application/json", None]
)
async def test_a_json_body_is_json_whatever_its_content_type(
    start_worker: StartWorker, start_router: RouterFactory, content_type: str | None
) -> None:
    worker = await start_worker("w1")
    client = await start_router()
    headers = {} if content_type is None else {"Content-Type": content_type}
    resp = await client.post(
        CHAT, data=chat_body(), headers=headers, skip_auto_headers=["Content-Type"]
    )
    assert resp.status == 200
    assert worker.headers[-1]["Content-Type"] == "application/json"


async def test_a_form_body_that_is_not_json_is_400(start_router: RouterFactory) -> None:
    client = await start_router()
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    resp = await client.post(CHAT, data=b"model=m&messages=hi", headers=form)
    assert resp.status == 400
    message = str((await error_of(resp))["message"])
    assert message.startswith("We could not parse the JSON body")


async def test_body_over_the_limit_is_413(start_router: RouterFactory) -> None:
    client = await start_router(max_body_bytes=2048)
    big = chat_body(stop="x" * 4000)
    resp = await client.post(CHAT, data=big, headers=JSON_HEADERS)
    assert resp.status == 413
    assert (await error_of(resp))["code"] == "payload_too_large"


async def test_unknown_route_and_wrong_method_are_openai_shaped(
    start_router: RouterFactory,
) -> None:
    client = await start_router()
    resp = await client.get("/v1/nothing")
    assert resp.status == 404
    assert "Invalid URL" in str((await error_of(resp))["message"])
    resp = await client.get(CHAT)
    assert resp.status == 405
    assert resp.headers["Allow"] == "POST"
    await error_of(resp)


async def test_fails_over_when_a_worker_refuses_connections(
    start_worker: StartWorker, start_router: RouterFactory, redis: Redis[bytes]
) -> None:
    good = await start_worker("good", running=5)
    # Least loaded, so tried first; nothing listens on its port.
    dead = make_record("dead", f"http://127.0.0.1:{free_port()}")
    await publish_worker(redis, dead, TTL_MS)
    client = await start_router()
    resp = await client.post(CHAT, data=chat_body(), headers=JSON_HEADERS)
    assert resp.status == 200
    assert await resp.read() == PLAIN_BODY
    assert len(good.bodies) == 1
    assert sample(client, "router_upstream_retries_total", model=MODEL) == 1
    assert sample(client, "router_upstream_errors_total", worker="dead", kind="connect") == 1
    view = app_of(client)[VIEW]
    assert view.upstreams["dead"].in_flight == view.upstreams["good"].in_flight == 0
    # Until it reports again, the refusing worker is no longer tried first.
    resp = await client.post(CHAT, data=chat_body(), headers=JSON_HEADERS)
    assert resp.status == 200
    assert sample(client, "router_upstream_errors_total", worker="dead", kind="connect") == 1


async def test_fails_over_from_a_busy_worker_then_gives_503(
    start_worker: StartWorker, start_router: RouterFactory
) -> None:
    busy = await start_worker("busy", mode="busy")
    good = await start_worker("good", running=5)
    client = await start_router()
    resp = await client.post(CHAT, data=chat_body(), headers=JSON_HEADERS)
    assert resp.status == 200
    assert (len(busy.bodies), len(good.bodies)) == (1, 1)

    good.mode = "busy"
    resp = await client.post(CHAT, data=chat_body(), headers=JSON_HEADERS)
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "1"


async def test_no_reachable_worker_is_502(start_router: RouterFactory, redis: Redis[bytes]) -> None:
    for worker_id in ("a", "b"):
        record = make_record(worker_id, f"http://127.0.0.1:{free_port()}")
        await publish_worker(redis, record, TTL_MS)
    client = await start_router()
    resp = await client.post(CHAT, data=chat_body(stream=True), headers=JSON_HEADERS)
    assert resp.status == 502
    assert (await error_of(resp))["code"] == "upstream_error"


async def test_upstream_death_mid_stream_ends_with_an_error_event(
    start_worker: StartWorker, start_router: RouterFactory
) -> None:
    worker = await start_worker("w1", mode="die")
    client = await start_router()
    resp = await client.post(CHAT, data=chat_body(stream=True), headers=JSON_HEADERS)
    assert resp.status == 200
    data = await resp.read()
    whole = STREAM_FRAMES[0] + STREAM_FRAMES[1]
    assert data.startswith(whole)  # the half frame after them is dropped, not relayed
    error_frame, done, end = data[len(whole) :].split(b"\n\n")
    assert error_frame.startswith(b"data: ")
    assert orjson.loads(error_frame[6:])["error"]["code"] == "upstream_error"
    assert (done, end) == (b"data: [DONE]", b"")
    assert len(worker.bodies) == 1  # never retried after the first byte
    assert sample(client, "router_upstream_errors_total", worker="w1", kind="broken") == 1


async def test_client_disconnect_mid_stream_cancels_the_worker(
    start_worker: StartWorker, start_router: RouterFactory
) -> None:
    worker = await start_worker("w1", mode="hang")
    client = await start_router()
    resp = await client.post(CHAT, data=chat_body(stream=True), headers=JSON_HEADERS)
    # The first frame arrives while the worker is still generating: relayed, not buffered.
    first = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 2)
    assert first == STREAM_FRAMES[0]
    resp.close()
    await asyncio.wait_for(worker.cancelled.wait(), 2)
    await eventually(lambda: sample(client, "router_cancellations_total", phase="streaming") == 1)
    await eventually(lambda: app_of(client)[VIEW].upstreams["w1"].in_flight == 0)


async def test_client_disconnect_before_the_answer_cancels_the_worker(
    start_worker: StartWorker, start_router: RouterFactory
) -> None:
    worker = await start_worker("w1", mode="hang")
    client = await start_router()
    with pytest.raises(TimeoutError):
        await client.post(
            CHAT, data=chat_body(), headers=JSON_HEADERS, timeout=ClientTimeout(total=0.3)
        )
    await asyncio.wait_for(worker.cancelled.wait(), 2)
    await eventually(lambda: sample(client, "router_cancellations_total", phase="waiting") == 1)
    await eventually(
        lambda: sample(client, "router_requests_total", endpoint="chat_completions",
                       model=MODEL, status_class="cancelled") == 1
    )  # fmt: skip


async def test_request_ids(start_worker: StartWorker, start_router: RouterFactory) -> None:
    client = await start_router()
    resp = await client.get("/v1/models", headers={"X-Request-Id": "req-42"})
    assert resp.headers["X-Request-Id"] == "req-42"
    resp = await client.get("/v1/models", headers={"X-Request-Id": "x" * 129})
    assert len(resp.headers["X-Request-Id"]) == 32
    resp = await client.post(CHAT, data=b"[]", headers={**JSON_HEADERS, "X-Request-Id": "bad-body"})
    assert resp.status == 400
    assert resp.headers["X-Request-Id"] == "bad-body"


async def test_models_lists_those_with_a_live_worker(
    start_worker: StartWorker, start_router: RouterFactory
) -> None:
    await start_worker("w1")
    await start_worker("w2", model="org/other")
    await start_worker("w3", model="drained", state=WorkerState.DRAINING)
    client = await start_router()
    resp = await client.get("/v1/models")
    assert resp.status == 200
    body = orjson.loads(await resp.read())
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["org/other", MODEL]
    assert all(m["object"] == "model" and m["owned_by"] == "xerotier" for m in body["data"])
    assert all(isinstance(m["created"], int) and m["created"] > 0 for m in body["data"])

    resp = await client.get("/v1/models/org/other")
    assert resp.status == 200
    assert orjson.loads(await resp.read())["id"] == "org/other"
    resp = await client.get("/v1/models/drained")
    assert resp.status == 404
    assert (await error_of(resp))["code"] == "model_not_found"


async def test_health_and_metrics(start_worker: StartWorker, start_router: RouterFactory) -> None:
    await start_worker("w1")
    client = await start_router()
    resp = await client.get("/health")
    assert resp.status == 200
    health = orjson.loads(await resp.read())
    assert (health["status"], health["workers"], health["models"]) == ("ok", 1, 1)
    assert 0 <= health["registry_age_s"] < 5

    resp = await client.post(CHAT, data=chat_body(stream=True), headers=JSON_HEADERS)
    await resp.read()
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.content_type == "text/plain"
    text = await resp.text()
    for family in (
        "router_requests_total",
        "router_request_duration_seconds",
        "router_time_to_first_byte_seconds",
        "router_inter_chunk_gap_seconds",
        "router_overhead_seconds",
        "router_queue_wait_seconds",
        "router_worker_in_flight",
        "router_upstream_errors_total",
        "router_upstream_retries_total",
        "router_cancellations_total",
        "router_rejections_total",
        "router_registry_workers",
        "router_registry_staleness_seconds",
        "router_registry_errors_total",
    ):
        assert f"# TYPE {family} " in text, family
    assert 'router_registry_workers{model="smollm2-135m",state="ready"} 1.0' in text
    assert 'router_worker_in_flight{model="smollm2-135m",worker="w1"} 0.0' in text


async def test_ready_waits_for_the_first_registry_read(
    aiohttp_client: AiohttpClient, tmp_path: Path
) -> None:
    """Started while Redis is down, the router is alive (/health 200) but not ready (/ready
    503); once Redis answers and a full read lands, /ready says 200, on both listeners."""
    redis = RedisServer.create(tmp_path)  # its port, nothing listening yet
    metrics_port = free_port()
    config = RouterConfig(
        redis_url=redis.url,
        registry_refresh_s=0.2,
        connect_timeout_s=0.5,
        auth=False,
        metrics_port=metrics_port,
    )
    client = await aiohttp_client(create_app(config))
    metrics_url = f"http://127.0.0.1:{metrics_port}"
    try:
        for url in ("/ready", f"{metrics_url}/ready"):
            resp = await client.session.get(client.make_url(url) if url[0] == "/" else url)
            assert resp.status == 503, url
            assert orjson.loads(await resp.read()) == {
                "status": "loading",
                "registry_age_s": None,
            }
        assert (await client.get("/health")).status == 200
        await asyncio.to_thread(redis.start)

        async def ready() -> bool:
            return (await client.get("/ready")).status == 200

        await eventually(ready, timeout_s=10)
        resp = await client.session.get(f"{metrics_url}/ready")
        assert resp.status == 200
        body = orjson.loads(await resp.read())
        assert body["status"] == "ready" and 0 <= body["registry_age_s"] < 10
    finally:
        redis.stop()


async def test_new_worker_is_used_without_a_restart(
    start_worker: StartWorker, start_router: RouterFactory
) -> None:
    client = await start_router()
    resp = await client.post(CHAT, data=chat_body(), headers=JSON_HEADERS)
    assert resp.status == 404
    worker = await start_worker("late")
    await eventually(lambda: bool(app_of(client)[VIEW].candidates(MODEL)))
    resp = await client.post(CHAT, data=chat_body(), headers=JSON_HEADERS)
    assert resp.status == 200
    assert len(worker.bodies) == 1


async def test_openai_sdk_works_through_the_router(
    start_worker: StartWorker, start_router: RouterFactory
) -> None:
    await start_worker("w1")
    client = await start_router()
    sdk = AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key="xero_test", max_retries=0)
    try:
        completion = await sdk.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}]
        )
        assert completion.choices[0].message.content == "héllo"
        stream = await sdk.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True
        )
        text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream])
        assert text == "Hello"
        models = await sdk.models.list()
        assert [m.id for m in models.data] == [MODEL]
    finally:
        await sdk.close()
