"""Application wiring: `create_app(config)` builds the app; each resource has one cleanup_ctx.

Startup runs the contexts in order (metrics, Redis, access, admission, worker session, registry
watcher) and teardown in reverse, so the watcher stops before the Redis client it reads closes,
the worker session closes only after in-flight relays have finished or been cancelled, and the
admission queue (which the view wakes) is unhooked last.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import hdrs, web
from redis.asyncio import BlockingConnectionPool, Redis

from router import handlers
from router.access import Access
from router.admin_api import admin_site_ctx
from router.admission import Admission
from router.appkeys import ACCESS, ADMISSION, CONFIG, METRICS, POLICY, REDIS, RELAY, VIEW
from router.balancer import CacheAware, Policy, make_policy
from router.config import RouterConfig
from router.metrics import RouterMetrics
from router.middleware import edge_middleware
from router.proxy import Relay, create_session
from router.view import RegistryView
from router.watcher import RegistryWatcher

logger = logging.getLogger(__name__)

REDIS_TIMEOUT_S = 5.0
# Connections one router keeps to Redis. Every keyed request makes two script calls (admit, then
# settle off the answer's path) and leases renew in the background, so a burst needs many at
# once; past this many a call waits for a free one (up to REDIS_TIMEOUT_S) instead of failing,
# as redis-py's default pool (100, then MaxConnectionsError) made 64 concurrent clients get 503s.
REDIS_MAX_CONNECTIONS = 512
METRICS_SHUTDOWN_S = 2.0  # a scrape is one quick GET; nothing to wait for
PROJECT = "/{project:proj_[A-Za-z0-9]+}"
ENDPOINT = "/{endpoint:[a-z0-9][a-z0-9-]{0,62}}"


def create_app(config: RouterConfig, *, policy: Policy | None = None) -> web.Application:
    app = web.Application(client_max_size=config.max_body_bytes, middlewares=[edge_middleware])
    app[CONFIG] = config
    app[METRICS] = RouterMetrics()
    app[VIEW] = RegistryView(config.worker_stale_s)
    if policy is None:
        policy = make_policy(config.policy, imbalance=config.cache_imbalance)
    app[POLICY] = policy
    app.cleanup_ctx.extend(
        [_metrics_ctx, _redis_ctx, _access_ctx, _admission_ctx, _worker_session_ctx, _watcher_ctx]
    )
    if config.metrics_port is not None:
        # Metrics name projects and endpoints: on their own listener, never on the public one.
        app.cleanup_ctx.insert(1, _metrics_site_ctx)
    if config.admin_port is not None:
        # Tenancy writes on their own listener and Redis user (router.admin_api); up last,
        # closed first.
        app.cleanup_ctx.append(admin_site_ctx)

    # Cache-aware: chat requests carry their affinity (router.affinity); else none is computed.
    affine = isinstance(app[POLICY], CacheAware)
    chat = handlers.affine_chat_completions if affine else handlers.chat_completions
    # Plain and DNS-based (the Host names the endpoint), then the seed's path-based forms.
    for prefix in ("", PROJECT, PROJECT + ENDPOINT):
        app.router.add_post(prefix + "/v1/chat/completions", chat)
        app.router.add_post(prefix + "/v1/completions", handlers.completions)
        app.router.add_post(prefix + "/v1/embeddings", handlers.embeddings)
        app.router.add_get(prefix + "/v1/models", handlers.list_models)
        app.router.add_get(prefix + "/v1/models/{model:.+}", handlers.retrieve_model)
    app.router.add_get("/health", handlers.health)
    app.router.add_get("/ready", handlers.ready)
    if config.metrics_port is None:
        app.router.add_get("/metrics", handlers.metrics)
    return app


async def _metrics_ctx(app: web.Application) -> AsyncIterator[None]:
    app[METRICS].watch_view(app[VIEW])
    yield
    app[METRICS].unwatch_view()


async def _metrics_site_ctx(app: web.Application) -> AsyncIterator[None]:
    """/metrics and /health on `metrics_port` (same host), up from first to nearly last."""
    config = app[CONFIG]
    site_app = web.Application()
    site_app[METRICS] = app[METRICS]
    site_app[VIEW] = app[VIEW]
    site_app.router.add_get("/metrics", handlers.metrics)
    site_app.router.add_get("/health", handlers.health)
    site_app.router.add_get("/ready", handlers.ready)
    runner = web.AppRunner(site_app, access_log=None, shutdown_timeout=METRICS_SHUTDOWN_S)
    await runner.setup()
    await web.TCPSite(runner, config.host, config.metrics_port).start()
    yield
    await runner.cleanup()


async def _redis_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    pool: BlockingConnectionPool[Any] = BlockingConnectionPool.from_url(
        config.redis_url,
        max_connections=REDIS_MAX_CONNECTIONS,
        timeout=REDIS_TIMEOUT_S,
        socket_connect_timeout=config.connect_timeout_s,
        socket_timeout=REDIS_TIMEOUT_S,
        socket_keepalive=True,
        health_check_interval=10,
    )
    redis: Redis[Any] = Redis(connection_pool=pool)
    app[REDIS] = redis
    yield
    await redis.aclose()  # type: ignore[attr-defined]  # types-redis predates it
    await pool.disconnect()  # a pool given to the client is not the client's to close


async def _access_ctx(app: web.Application) -> AsyncIterator[None]:
    access = Access(app[REDIS], app[CONFIG], app[METRICS])
    app[ACCESS] = access
    access.start()
    yield
    await access.close()


async def _admission_ctx(app: web.Application) -> AsyncIterator[None]:
    admission = Admission(app[VIEW], app[POLICY], app[METRICS], app[CONFIG])
    app[ADMISSION] = admission
    app[VIEW].add_listener(admission.capacity_changed)
    yield
    app[VIEW].remove_listener(admission.capacity_changed)
    admission.close()


async def _worker_session_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    # Workers with a secret serve only requests that carry it (worker.auth).
    secret = config.worker_secret(os.environ)
    headers: dict[str, str] | None = None
    if secret is not None:
        headers = {hdrs.AUTHORIZATION: f"Bearer {secret}"}
    session = create_session(config.connect_timeout_s, headers)
    app[RELAY] = Relay(session, app[ADMISSION], app[METRICS], config)
    yield
    await session.close()


async def _watcher_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    watcher = RegistryWatcher(
        app[REDIS],
        app[VIEW],
        app[METRICS],
        refresh_s=config.registry_refresh_s,
        read_timeout_s=REDIS_TIMEOUT_S,
        keyspace=config.keyspace,
    )
    await watcher.start()
    yield
    await watcher.close()
