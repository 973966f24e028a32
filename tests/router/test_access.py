"""Tenancy's request step: Access alone on made-up requests (scoping, naming, caching), then
in the app, in-process (--auth off routing, Redis failures, project metrics).

A real redis-server per test (one test stops it by PID), a fake worker (a real aiohttp server,
tests/router/fakes.py) registered as a worker would, and the router app on a test server.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, make_mocked_request
from pytest_aiohttp import AiohttpClient, AiohttpServer
from redis.asyncio import Redis

from contract.errors import AuthenticationFailed, ModelNotFound, NotFound, RateLimited
from contract.registry import publish_worker
from router import tenant_admin
from router.access import OPEN, Access
from router.app import create_app
from router.appkeys import METRICS, VIEW
from router.config import RouterConfig
from router.metrics import RouterMetrics
from router.tenants import KeyRecord
from tests.router.fakes import MODEL, TTL_MS, FakeWorker, RedisServer, make_record
from tests.waits import eventually

from .conftest import FakeClock

BASE_DOMAIN = "api.localtest"
Client = TestClient[web.Request, web.Application]


def request(
    *,
    key: str | None = None,
    host: str = "127.0.0.1:8080",
    project: str | None = None,
    endpoint: str | None = None,
) -> web.Request:
    """A request as the router's routes would match it (path-based names in match_info)."""
    headers = {"Host": host, **({"Authorization": f"Bearer {key}"} if key else {})}
    named = {"project": project, "endpoint": endpoint}
    info = {name: value for name, value in named.items() if value is not None}
    return make_mocked_request("POST", "/v1/chat/completions", headers=headers, match_info=info)


async def two_projects(redis: Redis[bytes]) -> tuple[str, str, KeyRecord, str]:
    """Projects mine and theirs, each with `chat` serving m1; a key of mine (record, key)."""
    mine = (await tenant_admin.create_project(redis, "mine")).project_id
    theirs = (await tenant_admin.create_project(redis, "theirs")).project_id
    for pid in (mine, theirs):
        await tenant_admin.create_endpoint(redis, pid, "chat", ["m1"])
    new = await tenant_admin.create_key(redis, mine)
    return mine, theirs, new.record, new.key


def access(redis: Redis[bytes], redis_url: str, clock: FakeClock, **settings: Any) -> Access:
    config = RouterConfig(redis_url=redis_url, base_domain=BASE_DOMAIN, **settings)
    return Access(redis, config, RouterMetrics(), clock=clock.monotonic)


async def test_a_key_is_scoped_to_its_project(
    redis: Redis[bytes], redis_url: str, clock: FakeClock
) -> None:
    mine, theirs, record, key = await two_projects(redis)
    await tenant_admin.create_endpoint(redis, mine, "other", ["m2"])
    guard = access(redis, redis_url, clock)

    scope = await guard.scope(request(key=key, project=mine.lower(), endpoint="chat"))
    assert scope.key == record and scope.project_id == mine
    assert scope.endpoint is not None and scope.endpoint.project_id == mine
    guard.check_model(scope, "m1")
    with pytest.raises(ModelNotFound) as model_info:
        guard.check_model(scope, "m2")
    assert model_info.value.code == "model_not_found" and model_info.value.status == 404
    # Without an endpoint in the URL: any model of the key's project.
    plain = await guard.scope(request(key=key))
    assert plain.endpoint is None and plain.project_id == mine
    assert plain.allows("m1") and plain.allows("m2") and not plain.allows("m3")
    # Another project's endpoint and a project that does not exist look the same.
    errors = []
    for project_id in (theirs, "proj_NOPE"):
        with pytest.raises(NotFound) as info:
            await guard.scope(request(key=key, project=project_id, endpoint="chat"))
        errors.append((info.value.code, info.value.message.replace(project_id, "?")))
    assert errors[0] == errors[1] == ("not_found", "Project `?` not found.")
    with pytest.raises(NotFound, match="Endpoint `nope` not found"):
        await guard.scope(request(key=key, project=mine, endpoint="nope"))
    # The key is checked first: a bad one is a 401 whatever the URL names.
    with pytest.raises(AuthenticationFailed):
        await guard.scope(request(key="xero_x_" + "A" * 43, project=theirs, endpoint="chat"))


async def test_endpoints_are_cached_for_the_ttl(
    redis: Redis[bytes], redis_url: str, clock: FakeClock
) -> None:
    mine, _, _, key = await two_projects(redis)
    guard = access(redis, redis_url, clock, key_cache_ttl_s=2.0)
    assert (await guard.scope(request(key=key, project=mine, endpoint="chat"))).allows("m1")
    # A deleted endpoint is served from the cache until its TTL passes.
    await tenant_admin.delete_endpoint(redis, mine, "chat")
    clock.advance(1.9)
    assert (await guard.scope(request(key=key, project=mine, endpoint="chat"))).allows("m1")
    clock.advance(0.1)
    with pytest.raises(NotFound):
        await guard.scope(request(key=key, project=mine, endpoint="chat"))


async def test_a_host_under_the_base_domain_names_the_endpoint(
    redis: Redis[bytes], redis_url: str, clock: FakeClock
) -> None:
    mine, _, _, key = await two_projects(redis)
    guard = access(redis, redis_url, clock)
    host = f"chat.{mine.lower()}.{BASE_DOMAIN}"
    scope = await guard.scope(request(key=key, host=host + ":8080"))
    assert scope.endpoint is not None and (scope.endpoint.project_id, scope.endpoint.name) == (
        mine,
        "chat",
    )
    with pytest.raises(NotFound, match="No endpoint is served at"):
        await guard.scope(request(key=key, host="x." + host))
    with pytest.raises(NotFound, match="Endpoint `other` not found"):
        await guard.scope(request(key=key, host=f"other.{mine}.{BASE_DOMAIN}"))
    # Another name for this router: plain routing in the key's project.
    assert (await guard.scope(request(key=key, host="localhost"))).endpoint is None


async def test_admit_and_settle_spend_the_key_limits(
    redis: Redis[bytes], redis_url: str, clock: FakeClock
) -> None:
    mine, _, _, _ = await two_projects(redis)
    limited = await tenant_admin.create_key(redis, mine, rpm=2, tpm=100)
    guard = access(redis, redis_url, clock)
    scope = await guard.scope(request(key=limited.key))
    assert scope.key is not None
    # 400 bytes of body (about 100 prompt tokens) and 500 completion: the whole TPM at most.
    ticket = await guard.admit(scope.key, 400, 500)
    assert ticket.decision.reserved_tokens == 100
    assert ticket.decision.headers()["x-ratelimit-remaining-tokens"] == "0"
    ticket.meter.answered("30")
    ticket.meter.completion_tokens = 10
    await guard.settle(ticket)  # 60 of the 100 reserved are given back
    small = await guard.admit(scope.key, 40, 10)  # 10 + 10
    assert small.decision.headers()["x-ratelimit-remaining-tokens"] == "40"
    with pytest.raises(RateLimited) as info:
        await guard.admit(scope.key, 4, 1)
    assert info.value.status == 429 and info.value.code == "rate_limit_exceeded"
    assert info.value.headers()["x-ratelimit-remaining-requests"] == "0"


async def test_settle_counts_tokens_in_redis_and_metrics_even_without_limits(
    redis: Redis[bytes], redis_url: str, clock: FakeClock
) -> None:
    mine, _, record, _ = await two_projects(redis)
    guard = access(redis, redis_url, clock)
    await redis.config_resetstat()
    ticket = await guard.admit(record, 100, 16)
    assert ticket.decision.headers() == {}
    stats = await redis.info("commandstats")
    assert not [k for k in stats if k.startswith("cmdstat_eval")]  # no limits: no admit call
    ticket.meter.answered(None)  # no header from the worker: 100 bytes are about 25 tokens
    ticket.meter.completion_tokens = 3
    await guard.settle(ticket)
    assert await redis.hgetall(f"usage:key:{record.key_id}") == {
        b"prompt_tokens": b"25",
        b"completion_tokens": b"3",
        b"requests": b"1",
    }
    samples = {
        (s.name, tuple(sorted(s.labels.values())), s.value)
        for family in guard._metrics.registry.collect()
        if family.name in ("router_tokens", "router_key_tokens")
        for s in family.samples
        if s.name.endswith("_total")
    }
    assert samples == {
        ("router_tokens_total", tuple(sorted((mine, "prompt"))), 25.0),
        ("router_tokens_total", tuple(sorted((mine, "completion"))), 3.0),
        ("router_key_tokens_total", tuple(sorted((record.key_id, "prompt"))), 25.0),
        ("router_key_tokens_total", tuple(sorted((record.key_id, "completion"))), 3.0),
    }


async def test_a_settle_that_redis_refuses_is_counted_not_raised(
    redis: Redis[bytes], redis_url: str, clock: FakeClock, redis_server: RedisServer
) -> None:
    _, _, record, _ = await two_projects(redis)
    guard = access(redis, redis_url, clock)
    ticket = await guard.admit(record, 100, 16)
    redis_server.stop()
    await guard.settle(ticket)
    assert guard._metrics.registry.get_sample_value("router_settle_errors_total") == 1


async def test_auth_off_without_a_name_is_open(
    redis: Redis[bytes], redis_url: str, clock: FakeClock
) -> None:
    guard = access(redis, redis_url, clock, auth=False)
    assert await guard.scope(request()) is OPEN
    assert await redis.dbsize() == 0


@pytest.fixture
def start(
    aiohttp_server: AiohttpServer,
    aiohttp_client: AiohttpClient,
    redis_server: RedisServer,
    redis: Redis[bytes],
) -> Callable[..., Awaitable[Client]]:
    """One fake worker serving MODEL, then a router app that sees it."""

    async def go(**overrides: Any) -> Client:
        worker = FakeWorker("w1")
        server = await aiohttp_server(worker.app())
        worker.url = str(server.make_url("")).rstrip("/")
        await publish_worker(redis, make_record("w1", worker.url), TTL_MS)
        settings: dict[str, Any] = {
            "redis_url": redis_server.url,
            "registry_refresh_s": 0.2,
            "worker_stale_s": 30.0,
            "connect_timeout_s": 1.0,
            "read_timeout_s": 5.0,
            "base_domain": BASE_DOMAIN,
            **overrides,
        }
        client = await aiohttp_client(create_app(RouterConfig(**settings)))
        app = client.app
        assert app is not None
        await eventually(lambda: bool(app[VIEW].candidates(MODEL)))
        return client

    return go


async def post(client: Client, path: str, headers: dict[str, str] | None = None) -> Any:
    """A chat completion for MODEL."""
    body = orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
    return await client.post(
        path, data=body, headers={"Content-Type": "application/json", **(headers or {})}
    )


async def error_code(resp: Any) -> str:
    body = orjson.loads(await resp.read())
    return str(body["error"]["code"])


def project_count(client: Client, project: str, endpoint: str, status_class: str) -> float:
    assert client.app is not None
    value = client.app[METRICS].registry.get_sample_value(
        "router_project_requests_total",
        {"project": project, "project_endpoint": endpoint, "status_class": status_class},
    )
    return 0.0 if value is None else value


async def test_auth_off_still_resolves_projects_and_endpoints(
    start: Callable[..., Awaitable[Client]], redis: Redis[bytes]
) -> None:
    project = await tenant_admin.create_project(redis, "Dev")
    pid = project.project_id
    await tenant_admin.create_endpoint(redis, pid, "chat", [MODEL])
    await tenant_admin.create_endpoint(redis, pid, "other", ["not-served"])
    client = await start(auth=False)

    # No key needed anywhere; plain /v1 routes as ever.
    assert (await post(client, "/v1/chat/completions")).status == 200
    resp = await client.get("/v1/models")
    assert [m["id"] for m in orjson.loads(await resp.read())["data"]] == [MODEL]
    assert project_count(client, "none", "", "2xx") == 1

    # Path-based: the endpoint's models only.
    assert (await post(client, f"/{pid}/chat/v1/chat/completions")).status == 200
    assert project_count(client, pid, "chat", "2xx") == 1
    resp = await post(client, f"/{pid}/other/v1/chat/completions")
    assert (resp.status, await error_code(resp)) == (404, "model_not_found")
    resp = await client.get(f"/{pid}/other/v1/models")
    assert orjson.loads(await resp.read())["data"] == []
    assert (await client.get(f"/{pid}/chat/v1/models/{MODEL}")).status == 200
    assert (await client.get(f"/{pid}/v1/models/{MODEL}")).status == 200
    assert (await client.get(f"/{pid}/nope/v1/models")).status == 404
    assert (await client.get("/proj_NOPE/v1/models")).status == 404
    assert (await post(client, "/proj_NOPE/v1/chat/completions")).status == 404

    # DNS-based, and a Host under the base domain that names nothing.
    host = {"Host": f"chat.{pid.lower()}.{BASE_DOMAIN}:8080"}
    assert (await post(client, "/v1/chat/completions", host)).status == 200
    resp = await client.get("/v1/models", headers={"Host": f"other.{pid.lower()}.{BASE_DOMAIN}"})
    assert orjson.loads(await resp.read())["data"] == []
    resp = await client.get("/v1/models", headers={"Host": f"x.y.z.{BASE_DOMAIN}"})
    assert resp.status == 404
    assert project_count(client, pid, "chat", "2xx") == 2
    assert project_count(client, "none", "", "4xx") == 1  # proj_NOPE: no label from input


async def test_redis_failures_are_503_not_500(
    start: Callable[..., Awaitable[Client]], redis: Redis[bytes], redis_server: RedisServer
) -> None:
    project = await tenant_admin.create_project(redis, "Acme")
    await tenant_admin.create_endpoint(redis, project.project_id, "chat", [MODEL])
    limited = await tenant_admin.create_key(redis, project.project_id, rpm=100)
    unknown = "xero_acme_" + "A" * 43  # well formed: only Redis can say it is unknown
    client = await start(auth=True, key_cache_ttl_s=5.0)

    def bearer(key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    resp = await post(client, "/v1/chat/completions", bearer(limited.key))
    assert resp.status == 200  # the key is cached now
    assert resp.headers["x-ratelimit-limit-requests"] == "100"
    assert project_count(client, project.project_id, "", "2xx") == 1

    redis_server.stop()
    # The cached key passes, but its rate limit needs Redis.
    resp = await post(client, "/v1/chat/completions", bearer(limited.key))
    assert (resp.status, await error_code(resp)) == (503, "service_unavailable")
    assert int(resp.headers["Retry-After"]) >= 1
    # An uncached key needs Redis to be looked up.
    for path in ("/v1/chat/completions", f"/{project.project_id}/chat/v1/chat/completions"):
        resp = await post(client, path, bearer(unknown))
        assert (resp.status, await error_code(resp)) == (503, "service_unavailable")
    resp = await client.get("/v1/models", headers=bearer(unknown))
    assert resp.status == 503
    # A malformed or missing key is refused without asking Redis.
    resp = await post(client, "/v1/chat/completions", bearer("nope"))
    assert (resp.status, await error_code(resp)) == (401, "invalid_api_key")
    resp = await post(client, "/v1/chat/completions")
    assert (resp.status, await error_code(resp)) == (401, "invalid_api_key")
    assert project_count(client, "none", "", "4xx") == 2
    assert project_count(client, "none", "", "5xx") == 2  # unknown keys
    assert project_count(client, project.project_id, "", "5xx") == 1  # the limited key
    assert client.app is not None
    rejections = client.app[METRICS].registry.get_sample_value(
        "router_rejections_total", {"reason": "invalid_api_key"}
    )
    assert rejections == 2
