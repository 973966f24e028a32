"""Admission, failover, the breaker and the timeouts: the router app against fake workers."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from dataclasses import replace

import orjson
from aiohttp import ClientTimeout, web
from pytest_aiohttp import AiohttpServer
from redis.asyncio import Redis

from contract.registry import WorkerState, now_ms, publish_worker
from router.appkeys import ADMISSION, VIEW
from tests.waits import eventually

from .fakes import MODEL, STREAM_FRAMES, TTL_MS, RouterFactory, StartWorker, make_record
from .test_handlers import CHAT, JSON_HEADERS, app_of, chat_body, error_of, sample


async def test_no_more_than_slots_per_worker_and_the_rest_wait_in_order(
    start_worker: StartWorker, start_router: RouterFactory
) -> None:
    worker = await start_worker("w1", slots=2)
    worker.gate = asyncio.Event()
    client = await start_router()
    admission = app_of(client)[ADMISSION]
    posts = [
        asyncio.create_task(client.post(CHAT, data=chat_body(), headers=JSON_HEADERS))
        for _ in range(5)
    ]
    await eventually(lambda: worker.active == 2 and admission.waiting(MODEL) == 3)
    assert sample(client, "router_queue_length", model=MODEL) == 3
    worker.gate.set()
    responses = await asyncio.gather(*posts)
    assert [r.status for r in responses] == [200] * 5
    assert worker.peak == 2
    assert len(worker.bodies) == 5
    assert admission.waiting(MODEL) == 0
    assert sample(client, "router_queue_length", model=MODEL) == 0
    assert sample(client, "router_queue_wait_seconds_count") == 5
    assert app_of(client)[VIEW].upstreams["w1"].in_flight == 0


async def test_a_full_queue_answers_503_at_once(
    start_worker: StartWorker, start_router: RouterFactory
) -> None:
    worker = await start_worker("w1", slots=1)
    worker.gate = asyncio.Event()
    client = await start_router(queue_max=1)
    held = [
        asyncio.create_task(client.post(CHAT, data=chat_body(), headers=JSON_HEADERS))
        for _ in range(2)
    ]
    await eventually(lambda: app_of(client)[ADMISSION].waiting(MODEL) == 1)
    resp = await client.post(CHAT, data=chat_body(), headers=JSON_HEADERS)
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "1"
    error = await error_of(resp)
    assert (error["type"], error["code"]) == ("service_unavailable", "queue_full")
    assert sample(client, "router_queue_rejections_total", reason="full") == 1
    worker.gate.set()
    assert [r.status for r in await asyncio.gather(*held)] == [200, 200]


async def test_waiting_past_the_bound_is_503(
    start_worker: StartWorker, start_router: RouterFactory
) -> None:
    worker = await start_worker("w1", slots=1)
    worker.gate = asyncio.Event()
    client = await start_router(queue_timeout_s=0.3)
    held = asyncio.create_task(client.post(CHAT, data=chat_body(), headers=JSON_HEADERS))
    await eventually(lambda: worker.active == 1)
    loop = asyncio.get_running_loop()
    started = loop.time()
    resp = await client.post(CHAT, data=chat_body(), headers=JSON_HEADERS)
    assert 0.25 < loop.time() - started < 2
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "1"
    assert (await error_of(resp))["code"] == "queue_timeout"
    assert sample(client, "router_queue_rejections_total", reason="timeout") == 1
    worker.gate.set()
    assert (await held).status == 200


async def test_a_queued_request_whose_client_leaves_is_dropped_at_once(
    start_worker: StartWorker, start_router: RouterFactory
) -> None:
    worker = await start_worker("w1", slots=1)
    worker.gate = asyncio.Event()
    client = await start_router()
    admission = app_of(client)[ADMISSION]
    held = asyncio.create_task(client.post(CHAT, data=chat_body(), headers=JSON_HEADERS))
    await eventually(lambda: worker.active == 1)
    leaving = asyncio.create_task(client.post(CHAT, data=chat_body(), headers=JSON_HEADERS))
    await eventually(lambda: admission.waiting(MODEL) == 1)
    leaving.cancel()  # the client hangs up while queued
    await eventually(lambda: admission.waiting(MODEL) == 0, timeout_s=1)
    await eventually(lambda: sample(client, "router_cancellations_total", phase="queued") == 1)
    worker.gate.set()
    assert (await held).status == 200
    await asyncio.sleep(0.05)
    assert len(worker.bodies) == 1  # the one that left never reached the worker


async def test_a_new_worker_wakes_the_queue(
    start_worker: StartWorker, start_router: RouterFactory
) -> None:
    first = await start_worker("w1", slots=1)
    first.gate = asyncio.Event()
    client = await start_router()
    held = asyncio.create_task(client.post(CHAT, data=chat_body(), headers=JSON_HEADERS))
    await eventually(lambda: first.active == 1)
    queued = asyncio.create_task(client.post(CHAT, data=chat_body(), headers=JSON_HEADERS))
    await eventually(lambda: app_of(client)[ADMISSION].waiting(MODEL) == 1)
    second = await start_worker("w2", slots=1)
    resp = await asyncio.wait_for(queued, 3)
    assert resp.status == 200
    assert len(second.bodies) == 1
    first.gate.set()
    assert (await held).status == 200


async def test_round_robin_policy_takes_turns(
    start_worker: StartWorker, start_router: RouterFactory
) -> None:
    workers = [await start_worker(f"w{i}") for i in range(3)]
    client = await start_router(policy="round-robin")
    for _ in range(6):
        resp = await client.post(CHAT, data=chat_body(), headers=JSON_HEADERS)
        assert resp.status == 200
    assert [len(w.bodies) for w in workers] == [2, 2, 2]


async def test_a_5xx_before_the_first_byte_goes_to_another_worker(
    start_worker: StartWorker, start_router: RouterFactory
) -> None:
    broken = await start_worker("broken", mode="error")
    good = await start_worker("good", running=5)  # tried second
    for stream in (False, True):
        client = await start_router()  # a fresh router: the failure made "broken" its last pick
        resp = await client.post(CHAT, data=chat_body(stream=stream), headers=JSON_HEADERS)
        assert resp.status == 200
        await resp.read()
        assert sample(client, "router_upstream_errors_total", worker="broken", kind="status") == 1
        assert sample(client, "router_upstream_retries_total", model=MODEL) == 1
    assert len(broken.bodies) == 2
    assert len(good.bodies) == 2


async def test_the_breaker_puts_a_failing_worker_aside_and_takes_it_back(
    start_worker: StartWorker, start_router: RouterFactory, redis: Redis[bytes]
) -> None:
    broken = await start_worker("broken", mode="error")
    good = await start_worker("good", running=50)  # the broken one is picked first
    client = await start_router(breaker_failures=2, breaker_open_s=0.3)
    view = app_of(client)[VIEW]

    async def heartbeat() -> None:
        """As the worker's heartbeat does: a fresh load report lifts the failure penalty."""
        record = replace(view.upstreams["broken"].record, heartbeat_ms=now_ms())
        await publish_worker(redis, record, TTL_MS)
        await eventually(lambda: view.upstreams["broken"].load == 0)

    async def ok() -> None:
        assert (await client.post(CHAT, data=chat_body(), headers=JSON_HEADERS)).status == 200

    for _ in range(2):
        await ok()
        await heartbeat()
    assert sample(client, "router_breaker_transitions_total", worker="broken", state="open") == 1
    for _ in range(3):  # aside: not even tried
        await ok()
    assert len(broken.bodies) == 2

    await asyncio.sleep(0.35)  # half-open: one probe goes, fails, and it is aside for longer
    await ok()
    assert len(broken.bodies) == 3
    assert sample(client, "router_breaker_transitions_total", worker="broken", state="open") == 2
    await heartbeat()
    await ok()
    assert len(broken.bodies) == 3

    broken.mode = "ok"  # healthy again: the next probe succeeds and it is back
    await asyncio.sleep(0.65)
    await ok()
    assert len(broken.bodies) == 4
    assert sample(client, "router_breaker_transitions_total", worker="broken", state="closed") == 1
    await ok()
    assert len(broken.bodies) == 5
    assert len(good.bodies) == 7


async def test_a_worker_silent_before_its_first_byte_is_504(
    start_worker: StartWorker, start_router: RouterFactory
) -> None:
    worker = await start_worker("w1", mode="silent")
    client = await start_router(first_token_timeout_s=0.3)
    for stream in (False, True):
        resp = await client.post(CHAT, data=chat_body(stream=stream), headers=JSON_HEADERS)
        assert resp.status == 504
        assert (await error_of(resp))["code"] == "timeout"
    assert len(worker.bodies) == 2  # not retried: the worker may have been generating
    await asyncio.wait_for(worker.cancelled.wait(), 2)  # and it was told to stop


async def test_a_worker_silent_mid_stream_ends_it_with_an_error_event(
    start_worker: StartWorker, start_router: RouterFactory
) -> None:
    worker = await start_worker("w1", mode="hang")
    client = await start_router(read_timeout_s=0.3)
    resp = await client.post(CHAT, data=chat_body(stream=True), headers=JSON_HEADERS)
    assert resp.status == 200
    body = await resp.read()
    assert body.startswith(STREAM_FRAMES[0])
    *_, error_frame, done = body.split(b"\n\n")[:-1]
    assert orjson.loads(error_frame.removeprefix(b"data: "))["error"]["code"] == "timeout"
    assert done == b"data: [DONE]"
    await asyncio.wait_for(worker.cancelled.wait(), 2)


async def test_a_stalled_request_body_is_408(start_router: RouterFactory) -> None:
    client = await start_router(body_timeout_s=0.3)
    assert client.server.port is not None
    head = (
        f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "Content-Length: 100\r\n\r\n"
    ).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    try:
        writer.write(head + b'{"model": ')
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(65536), 3)
    finally:
        writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 408 Request Timeout"
    body = orjson.loads(rest.partition(b"\r\n\r\n")[2])
    assert body["error"]["code"] == "request_timeout"


async def test_draining_worker_gets_nothing_and_its_503_is_retried(
    start_worker: StartWorker, start_router: RouterFactory, redis: Redis[bytes]
) -> None:
    draining = await start_worker("old", mode="busy")  # as a worker answers once draining
    fresh = await start_worker("new", running=3)
    client = await start_router()
    assert (await client.post(CHAT, data=chat_body(), headers=JSON_HEADERS)).status == 200
    assert (len(draining.bodies), len(fresh.bodies)) == (1, 1)
    record = make_record("old", draining.url, state=WorkerState.DRAINING)
    await publish_worker(redis, record, TTL_MS)
    await eventually(lambda: len(app_of(client)[VIEW].candidates(MODEL)) == 1)
    for _ in range(3):
        assert (await client.post(CHAT, data=chat_body(), headers=JSON_HEADERS)).status == 200
    assert (len(draining.bodies), len(fresh.bodies)) == (1, 4)


async def test_client_timeout_while_queued_frees_nothing_twice(
    start_worker: StartWorker, start_router: RouterFactory
) -> None:
    """Many queued clients leaving at once leave exact counters behind."""
    worker = await start_worker("w1", slots=1)
    worker.gate = asyncio.Event()
    client = await start_router()
    held = asyncio.create_task(client.post(CHAT, data=chat_body(), headers=JSON_HEADERS))
    await eventually(lambda: worker.active == 1)
    for _ in range(10):
        with contextlib.suppress(TimeoutError):
            await client.post(
                CHAT, data=chat_body(), headers=JSON_HEADERS, timeout=ClientTimeout(total=0.05)
            )
    await eventually(lambda: app_of(client)[ADMISSION].waiting(MODEL) == 0)
    worker.gate.set()
    assert (await held).status == 200
    await eventually(lambda: app_of(client)[VIEW].upstreams["w1"].in_flight == 0)
    resp = await client.post(CHAT, data=chat_body(), headers=JSON_HEADERS)
    assert resp.status == 200


async def test_a_client_that_stops_reading_is_cut_off(
    aiohttp_server: AiohttpServer, start_router: RouterFactory, redis: Redis[bytes]
) -> None:
    """A worker streaming fast to a client that reads nothing: once the router's writes stall
    for read_timeout_s, both connections are dropped instead of held forever."""
    upstream_cancelled = asyncio.Event()

    async def endless(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        frame = b"data: " + b"x" * 65536 + b"\n\n"
        try:
            while True:
                await response.write(frame)
        except asyncio.CancelledError:
            upstream_cancelled.set()
            raise

    app = web.Application()
    app.router.add_post("/v1/chat/completions", endless)
    server = await aiohttp_server(app)
    await publish_worker(redis, make_record("w1", str(server.make_url("")).rstrip("/")), TTL_MS)
    client = await start_router(read_timeout_s=0.5)
    assert client.server.port is not None
    body = chat_body(stream=True)
    head = (
        f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", client.server.port))
    try:
        await asyncio.get_running_loop().sock_sendall(sock, head + body)
        # Never read: the router's writes back up, then it gives up on us.
        await eventually(
            lambda: sample(client, "router_cancellations_total", phase="stalled") == 1, 10
        )
        await asyncio.wait_for(upstream_cancelled.wait(), 3)
    finally:
        sock.close()
    await eventually(lambda: app_of(client)[VIEW].upstreams["w1"].in_flight == 0)
