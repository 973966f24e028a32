"""`create_app`: the routes it serves and the resources its cleanup contexts build and tear down."""

from __future__ import annotations

from pytest_aiohttp import AiohttpClient
from redis.asyncio import Redis

from contract.registry import publish_worker
from router.app import create_app
from router.appkeys import ACCESS, ADMISSION, METRICS, POLICY, REDIS, RELAY, VIEW
from router.balancer import RoundRobin
from router.config import RouterConfig
from tests.processes import RedisServer

from .fakes import MODEL, TTL_MS, make_record


def config(redis_server: RedisServer) -> RouterConfig:
    return RouterConfig(redis_url=redis_server.url, auth=False, registry_refresh_s=0.2)


def test_routes_plain_path_based_and_endpoint_based() -> None:
    app = create_app(RouterConfig(redis_url="redis://127.0.0.1:1/0"))
    routes = {
        (r.method, r.resource.canonical)
        for r in app.router.routes()
        if r.resource is not None and r.method != "HEAD"
    }
    project, endpoint = "/{project}", "/{project}/{endpoint}"
    for prefix in ("", project, endpoint):
        assert ("POST", prefix + "/v1/chat/completions") in routes
        assert ("POST", prefix + "/v1/completions") in routes
        assert ("POST", prefix + "/v1/embeddings") in routes
        assert ("GET", prefix + "/v1/models") in routes
        assert ("GET", prefix + "/v1/models/{model}") in routes
    assert {("GET", "/health"), ("GET", "/ready"), ("GET", "/metrics")} <= routes
    assert len(routes) == 18


def test_a_policy_can_be_passed_in() -> None:
    policy = RoundRobin()
    app = create_app(RouterConfig(redis_url="redis://127.0.0.1:1/0"), policy=policy)
    assert app[POLICY] is policy


async def test_startup_builds_every_resource_and_cleanup_tears_them_down(
    aiohttp_client: AiohttpClient, redis_server: RedisServer, redis: Redis[bytes]
) -> None:
    await publish_worker(redis, make_record("w1", "http://127.0.0.1:1", model=MODEL), TTL_MS)
    app = create_app(config(redis_server))
    client = await aiohttp_client(app)
    for key in (REDIS, ACCESS, ADMISSION, RELAY):
        assert key in app
    # The watcher loaded the registry before the app served its first request.
    assert "w1" in app[VIEW].upstreams
    assert b"router_registry_workers" in app[METRICS].render()
    await client.close()  # runs the cleanup contexts in reverse
    # Metrics stop reading the view once the app is gone.
    assert b"router_registry_workers" not in app[METRICS].render()
