"""The relay on its own: a Relay with a real session, admission and view, in front of fake workers
(real aiohttp servers), driven through a one-route app. No Redis: the view is fed by hand."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient, AiohttpServer

from contract.registry import Event, EventType, Snapshot
from contract.sse import DONE, EVENT_STREAM, USAGE_TRAILER_HEADER, usage_trailer
from router.admission import Admission
from router.balancer import LeastLoaded
from router.config import RouterConfig
from router.exchange import Exchange, TokenMeter
from router.metrics import RouterMetrics
from router.middleware import edge_middleware
from router.proxy import Relay, create_session
from router.upstream import FAILED_PENALTY
from router.view import RegistryView

from .fakes import MODEL, PLAIN_BODY, STREAM_FRAMES, FakeWorker, free_port, make_record
from .test_handlers import chat_body, error_of

CHAT = "/v1/chat/completions"
USAGE = {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}


@dataclass
class Front:
    """A client-facing app whose one route hands every request to the relay."""

    client: TestClient[web.Request, web.Application]
    view: RegistryView
    metrics: RouterMetrics
    meters: list[TokenMeter] = field(default_factory=list)  # one per request, when metered

    def sample(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    def add_worker(self, worker_id: str, url: str, *, running: int = 0) -> None:
        record = make_record(worker_id, url, running=running)
        self.view.apply_event(Event(EventType.JOIN, worker_id, record))


FrontFactory = Callable[..., Awaitable[Front]]


@pytest.fixture
def front(aiohttp_client: AiohttpClient) -> FrontFactory:
    async def start(*, metered: bool = False, **config: Any) -> Front:
        settings = RouterConfig(
            redis_url="redis://127.0.0.1:1", connect_timeout_s=1.0, read_timeout_s=5.0, **config
        )
        view = RegistryView(stale_s=30.0)
        view.apply_snapshot(Snapshot({}, {}), started_at=0.0)  # loaded, and empty
        metrics = RouterMetrics()
        admission = Admission(view, LeastLoaded(), metrics, settings)
        session = create_session(settings.connect_timeout_s)
        relay = Relay(session, admission, metrics, settings)
        meters: list[TokenMeter] = []

        async def chat(request: web.Request) -> web.StreamResponse:
            meter = TokenMeter() if metered else None
            if meter is not None:
                meters.append(meter)
            exchange = Exchange(
                body=await request.read(),
                request_id="req-1",
                model=MODEL,
                series=metrics.chat_series(MODEL, False),
                arrived=time.perf_counter(),
                rate_headers={"x-ratelimit-limit-requests": "10"},
                meter=meter,
            )
            return await relay.forward(request, exchange)

        async def close(_: web.Application) -> None:
            admission.close()
            await session.close()

        app = web.Application(middlewares=[edge_middleware])
        app.router.add_post(CHAT, chat)
        app.on_cleanup.append(close)
        return Front(await aiohttp_client(app), view, metrics, meters)

    return start


@pytest.fixture
def fake_worker(aiohttp_server: AiohttpServer) -> Callable[..., Awaitable[FakeWorker]]:
    async def start(worker_id: str, mode: str = "ok") -> FakeWorker:
        worker = FakeWorker(worker_id, mode)
        server = await aiohttp_server(worker.app())
        worker.url = str(server.make_url("")).rstrip("/")
        return worker

    return start


async def test_a_refused_connection_fails_over_before_the_first_byte(
    front: FrontFactory, fake_worker: Callable[..., Awaitable[FakeWorker]]
) -> None:
    good = await fake_worker("good")
    relay = await front()
    relay.add_worker("dead", f"http://127.0.0.1:{free_port()}")  # least loaded: tried first
    relay.add_worker("good", good.url, running=5)
    resp = await relay.client.post(CHAT, data=chat_body())
    assert resp.status == 200
    assert await resp.read() == PLAIN_BODY
    assert resp.headers["x-ratelimit-limit-requests"] == "10"
    assert good.headers[0]["X-Request-Id"] == "req-1"
    assert USAGE_TRAILER_HEADER not in good.headers[0]  # not metered: no usage asked for
    assert relay.sample("router_upstream_errors_total", worker="dead", kind="connect") == 1
    assert relay.sample("router_upstream_retries_total", model=MODEL) == 1
    dead, alive = relay.view.upstreams["dead"], relay.view.upstreams["good"]
    assert dead.load == FAILED_PENALTY  # tried last until it reports again
    assert dead.in_flight == alive.in_flight == 0


async def test_busy_everywhere_is_503_and_broken_everywhere_is_502(
    front: FrontFactory, fake_worker: Callable[..., Awaitable[FakeWorker]]
) -> None:
    relay = await front()
    for worker_id in ("a", "b"):
        relay.add_worker(worker_id, (await fake_worker(worker_id, "busy")).url)
    resp = await relay.client.post(CHAT, data=chat_body())
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "1"
    assert relay.sample("router_upstream_errors_total", worker="a", kind="busy") == 1

    relay = await front()
    for worker_id in ("c", "d"):
        relay.add_worker(worker_id, (await fake_worker(worker_id, "error")).url)
    resp = await relay.client.post(CHAT, data=chat_body())
    assert resp.status == 502
    assert (await error_of(resp))["code"] == "upstream_error"
    assert relay.sample("router_upstream_errors_total", worker="c", kind="status") == 1


async def test_no_worker_of_the_model_is_decided_by_the_view(front: FrontFactory) -> None:
    relay = await front()
    resp = await relay.client.post(CHAT, data=chat_body())
    assert resp.status == 404
    assert (await error_of(resp))["code"] == "model_not_found"
    relay.view.apply_snapshot(Snapshot({}, {MODEL: 1}), started_at=0.0)
    resp = await relay.client.post(CHAT, data=chat_body())
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "1"


async def test_a_failure_after_the_first_byte_is_an_sse_error_event(
    front: FrontFactory, fake_worker: Callable[..., Awaitable[FakeWorker]]
) -> None:
    dying = await fake_worker("w1", "die")
    spare = await fake_worker("w2")
    relay = await front(breaker_failures=1)
    relay.add_worker("w1", dying.url)
    relay.add_worker("w2", spare.url, running=5)
    resp = await relay.client.post(CHAT, data=chat_body(stream=True))
    assert resp.status == 200
    assert resp.headers["X-Request-Id"] == "req-1"
    assert resp.headers["x-ratelimit-limit-requests"] == "10"
    data = await resp.read()
    whole = STREAM_FRAMES[0] + STREAM_FRAMES[1]
    assert data.startswith(whole)
    error_frame, tail = data[len(whole) :].split(b"\n\n", 1)
    assert orjson.loads(error_frame.removeprefix(b"data: "))["error"]["code"] == "upstream_error"
    assert tail == DONE
    assert spare.bodies == []  # never retried after the first byte
    assert relay.sample("router_upstream_errors_total", worker="w1", kind="broken") == 1
    assert relay.sample("router_breaker_transitions_total", worker="w1", state="open") == 1
    assert relay.view.upstreams["w1"].load == 0  # no refusal penalty: it did answer


def pieces_app(
    pieces: list[bytes], content_type: str = EVENT_STREAM, *, metered: bool = False
) -> web.Application:
    """A worker that writes `pieces` one write each, a little apart, as the relay may read them
    (chunked: no Content-Length); `metered`: it checks that the router asked for usage."""

    async def chat(request: web.Request) -> web.StreamResponse:
        await request.read()
        if metered:
            assert request.headers.get(USAGE_TRAILER_HEADER) == "1"
        response = web.StreamResponse(headers={"Content-Type": content_type})
        await response.prepare(request)
        for piece in pieces:
            await response.write(piece)
            await asyncio.sleep(0.01)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post(CHAT, chat)
    return app


FRAMES = b"".join(STREAM_FRAMES[:-1])
TRAILER = usage_trailer(USAGE)


def cut(data: bytes, *at: int) -> list[bytes]:
    """`data` cut at the offsets `at` (relative to the trailer's start)."""
    start = len(FRAMES)
    points = [0, *(start + a for a in at), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


@pytest.mark.parametrize(
    "at",
    [
        (),  # all in one piece
        (0,),  # the trailer starts a piece
        (-1,),  # the frame end before it straddles two pieces
        (3,),  # inside the ": usage " prefix
        (12,),  # inside its JSON
        (len(TRAILER) - 1,),  # between its two newlines
        (len(TRAILER),),  # [DONE] alone after it
        tuple(range(-2, len(TRAILER) + 2)),  # a byte at a time around it
    ],
)
async def test_the_usage_trailer_is_metered_and_stripped_across_chunks(
    front: FrontFactory, aiohttp_server: AiohttpServer, at: tuple[int, ...]
) -> None:
    server = await aiohttp_server(pieces_app(cut(FRAMES + TRAILER + DONE, *at), metered=True))
    relay = await front(metered=True)
    relay.add_worker("w1", str(server.make_url("")).rstrip("/"))
    resp = await relay.client.post(CHAT, data=chat_body(stream=True))
    assert resp.status == 200
    assert await resp.read() == FRAMES + DONE  # byte for byte what the client would get unmetered
    assert [m.total_tokens for m in relay.meters] == [7]


async def test_a_plain_answer_is_metered_from_its_usage(
    front: FrontFactory, fake_worker: Callable[..., Awaitable[FakeWorker]]
) -> None:
    worker = await fake_worker("w1")
    relay = await front(metered=True)
    relay.add_worker("w1", worker.url)
    resp = await relay.client.post(CHAT, data=chat_body())
    assert await resp.read() == PLAIN_BODY
    assert worker.headers[0][USAGE_TRAILER_HEADER] == "1"
    assert [m.total_tokens for m in relay.meters] == [4]


async def worker_url(aiohttp_server: AiohttpServer, app: web.Application) -> str:
    return str((await aiohttp_server(app)).make_url("")).rstrip("/")


async def test_a_frame_past_its_bound_ends_the_stream_and_counts_against_the_worker(
    front: FrontFactory, aiohttp_server: AiohttpServer
) -> None:
    pieces = [STREAM_FRAMES[0], b"data: " + b"x" * 600, b"x" * 600, b"never relayed\n\n"]
    relay = await front(max_frame_bytes=1024, breaker_failures=1)
    relay.add_worker("w1", await worker_url(aiohttp_server, pieces_app(pieces)))
    resp = await relay.client.post(CHAT, data=chat_body(stream=True))
    data = await resp.read()
    error_frame, tail = data.removeprefix(STREAM_FRAMES[0]).split(b"\n\n", 1)
    assert orjson.loads(error_frame.removeprefix(b"data: "))["error"]["code"] == "upstream_error"
    assert tail == DONE
    assert relay.sample("router_relay_limits_total", limit="frame") == 1
    assert relay.sample("router_upstream_errors_total", worker="w1", kind="broken") == 1
    assert relay.sample("router_breaker_transitions_total", worker="w1", state="open") == 1


@pytest.mark.parametrize("chunked", [True, False])
async def test_a_plain_answer_past_its_bound_is_502(
    front: FrontFactory, aiohttp_server: AiohttpServer, chunked: bool
) -> None:
    big = b'{"pad": "' + b"x" * 4096 + b'"}'

    async def whole(_: web.Request) -> web.Response:
        return web.Response(body=big, content_type="application/json")  # with Content-Length

    if chunked:
        app = pieces_app([big[:2000], big[2000:]], "application/json")
    else:
        app = web.Application()
        app.router.add_post(CHAT, whole)
    relay = await front(max_response_bytes=4096, breaker_failures=1)
    relay.add_worker("w1", await worker_url(aiohttp_server, app))
    resp = await relay.client.post(CHAT, data=chat_body())
    assert resp.status == 502
    assert (await error_of(resp))["code"] == "upstream_error"
    assert relay.sample("router_relay_limits_total", limit="body") == 1
    assert relay.sample("router_breaker_transitions_total", worker="w1", state="open") == 0
    assert relay.view.upstreams["w1"].in_flight == 0


async def test_a_stream_past_its_duration_ends_without_blaming_the_worker(
    front: FrontFactory, aiohttp_server: AiohttpServer
) -> None:
    app = pieces_app([STREAM_FRAMES[0]] * 100)  # about 1 s of frames
    relay = await front(max_stream_s=0.3, breaker_failures=1)
    relay.add_worker("w1", await worker_url(aiohttp_server, app))
    resp = await relay.client.post(CHAT, data=chat_body(stream=True))
    *frames, error_frame, done = (await resp.read()).split(b"\n\n")[:-1]
    assert 5 < len(frames) < 60
    assert orjson.loads(error_frame.removeprefix(b"data: "))["error"]["code"] == "timeout"
    assert done == b"data: [DONE]"
    assert relay.sample("router_relay_limits_total", limit="duration") == 1
    assert relay.sample("router_breaker_transitions_total", worker="w1", state="open") == 0
    assert relay.sample("router_upstream_errors_total", worker="w1", kind="timeout") == 0


async def test_a_slow_first_byte_is_504_but_neither_opens_the_breaker_nor_penalises(
    front: FrontFactory, fake_worker: Callable[..., Awaitable[FakeWorker]]
) -> None:
    worker = await fake_worker("w1", "hang")  # a plain answer that takes 30 s
    relay = await front(first_token_timeout_s=0.2, breaker_failures=1)
    relay.add_worker("w1", worker.url)
    for _ in range(2):
        resp = await relay.client.post(CHAT, data=chat_body())
        assert resp.status == 504
        assert (await error_of(resp))["code"] == "timeout"
    assert len(worker.bodies) == 2  # the breaker let the second one through
    assert relay.sample("router_upstream_errors_total", worker="w1", kind="timeout") == 2
    assert relay.sample("router_breaker_transitions_total", worker="w1", state="open") == 0
    assert relay.view.upstreams["w1"].load == 0  # not tried last either
