"""`python -m router`: parse the configuration (router.config), then serve until SIGTERM/SIGINT,
in this process or, with --processes N, in N supervised children (router.processes)."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import sys
from collections.abc import Sequence
from urllib.parse import urlsplit, urlunsplit

from aiohttp import web

from contract.logs import configure
from contract.options import ConfigError, LogLevel
from contract.secrets import ADMIN_KEY_ENV
from contract.tracing import setup
from router.app import create_app
from router.config import RouterConfig, parse_config
from router.processes import supervise
from router.tracing import REQUEST_LOGGER

logger = logging.getLogger(__name__)


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_config(argv, os.environ)
    try:
        config.worker_secret(os.environ)  # read again at startup; unreadable: a clean exit 2
        if config.admin_port is not None and config.admin_key(os.environ) is None:
            raise ConfigError(f"--admin-port needs a key: --admin-key-file or ${ADMIN_KEY_ENV}")
    except ConfigError as exc:
        print(f"python -m router: error: {exc}", file=sys.stderr)
        return 2
    configure(config.log_level, config.log_format, REQUEST_LOGGER)
    if config.processes > 1:
        return supervise(config, functools.partial(serve, reuse_port=True))
    return serve(config)


def serve(config: RouterConfig, *, reuse_port: bool = False) -> int:
    """One router process: serve until SIGTERM/SIGINT. With `reuse_port`, beside other
    processes on the same port (router.processes)."""
    try:
        # Here, not before a fork: the exporter runs a thread.
        flush = None if config.otlp_endpoint is None else setup(config.otlp_endpoint, "router")
    except ConfigError as exc:
        print(f"python -m router: error: {exc}", file=sys.stderr)
        return 2
    loop = _new_loop()
    logger.info(
        "router listening on %s:%s (redis %s, loop %s, pid %d)",
        config.host,
        config.port,
        _redacted(config.redis_url),
        type(loop).__module__,
        os.getpid(),
    )
    if config.metrics_port is not None:
        logger.info("metrics on %s:%s only", config.host, config.metrics_port)
    if config.admin_port is not None:
        logger.info("admin API on %s:%s", config.host, config.admin_port)
    # Shutdown on SIGTERM/SIGINT, as run_app sequences it: stop accepting connections, let
    # in-flight requests finish for up to shutdown_timeout_s, cancel what remains, then run the
    # cleanup contexts in reverse (watcher, worker session, Redis client).
    web.run_app(
        create_app(config),
        host=config.host,
        port=config.port,
        loop=loop,
        shutdown_timeout=config.shutdown_timeout_s,
        # aiohttp's default of 128 overflows when thousands of clients connect at once.
        backlog=config.backlog,
        reuse_port=reuse_port or None,
        # A client that hangs up cancels its handler, which closes the upstream request so the
        # worker stops generating.
        handler_cancellation=True,
        # One access-log line per request costs more than the routing itself; on only at DEBUG.
        access_log=(
            logging.getLogger("aiohttp.access") if config.log_level == LogLevel.DEBUG else None
        ),
        print=None,
    )
    if flush is not None:
        flush()  # the spans still batched
    return 0


def _redacted(url: str) -> str:
    """The URL with its password masked, in the userinfo and in a `?password=` query (redis-py
    reads both), so it can reach a log. Whatever does not split stays hidden whole."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<redis URL hidden: it does not parse>"
    netloc = parts.netloc
    userinfo, at, hostport = netloc.rpartition("@")
    if at:
        user, colon, _ = userinfo.partition(":")
        # Without a colon the userinfo may be a bare password: hide it all.
        netloc = f"{user}:***@{hostport}" if colon and user else f"***@{hostport}"
    query = "&".join(
        f"{name}=***" if "password" in name.lower() else field
        for field in parts.query.split("&")
        for name in (field.partition("=")[0],)
    )
    return urlunsplit(parts._replace(netloc=netloc, query=query if parts.query else ""))
