"""The metrics port: /metrics (and /health) on a listener of their own.

With `--metrics-port` the worker serves /metrics only there, on the same host, so that a
scraper reaches it while the API port stays closed to all but routers, and nothing that
fronts the API passes it on. Without it, /metrics stays on the API port. The listener is one
cleanup context: up before the model loads (so the load can be watched), down last.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web

from worker import appkeys
from worker.handlers import error_middleware, health, metrics

logger = logging.getLogger(__name__)


def metrics_app(app: web.Application) -> web.Application:
    """An application serving `app`'s /metrics and /health."""
    listener = web.Application(middlewares=[error_middleware])
    listener[appkeys.CONFIG] = app[appkeys.CONFIG]
    listener[appkeys.ENGINE] = app[appkeys.ENGINE]
    listener[appkeys.SLOTS] = app[appkeys.SLOTS]
    listener[appkeys.METRICS] = app[appkeys.METRICS]
    listener.router.add_get("/metrics", metrics)
    listener.router.add_get("/health", health)
    return listener


async def metrics_listener_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[appkeys.CONFIG]
    runner = web.AppRunner(metrics_app(app), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, config.host, config.metrics_port).start()
        logger.info("metrics on http://%s:%s/metrics", config.host, config.metrics_port)
        yield
    finally:
        await runner.cleanup()
