"""`python -m router`: parse flags and environment into a RouterConfig, then serve.

Every flag also reads ROUTER_<FLAG_IN_UPPER_SNAKE> from the environment (the Redis URL also reads
REDIS_URL); a flag beats the environment. Bad values exit with status 2 and one clear line.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from router.app import create_app
from router.config import DEFAULT_MAX_BODY_BYTES, RouterConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Option:
    field: str
    parse: Callable[[str], Any]
    default: Any
    help: str


def _integer(text: str) -> int:
    return int(text.strip())


def _number(text: str) -> float:
    return float(text.strip())


def _level(text: str) -> str:
    return text.strip().upper()


def _on_off(text: str) -> bool:
    value = text.strip().lower()
    if value not in ("on", "off"):
        raise ValueError(text)
    return value == "on"


def _lower(text: str) -> str:
    return text.strip().lower()


def _domain(text: str) -> str:
    return text.strip().strip(".").lower()


_OPTIONS = (
    _Option("host", str, "127.0.0.1", "address to listen on"),
    _Option("port", _integer, 8080, "port to listen on"),
    _Option("registry_refresh_s", _number, 1.0, "period of the full registry re-read"),
    _Option("worker_stale_s", _number, 2.5, "drop a worker this long after its last heartbeat"),
    _Option("connect_timeout_s", _number, 3.0, "timeout to connect to a worker"),
    _Option("read_timeout_s", _number, 300.0, "longest gap between two upstream chunks"),
    _Option("max_attempts", _integer, 3, "distinct workers tried before the first byte"),
    _Option("max_body_bytes", _integer, DEFAULT_MAX_BODY_BYTES, "largest request body"),
    _Option("shutdown_timeout_s", _number, 30.0, "grace for in-flight requests on SIGTERM"),
    _Option("log_level", _level, "INFO", "DEBUG, INFO, WARNING or ERROR"),
    _Option("auth", _on_off, "on", "API keys required: on, or off for local development only"),
    _Option("base_domain", _domain, None, "DNS suffix for {endpoint}.{project}.DOMAIN hosts"),
    _Option("key_cache_ttl_s", _number, 2.0, "how long a router trusts a key lookup (<= 5)"),
    # -- Overload and faults --
    _Option("policy", _lower, "least-loaded", "balancing: least-loaded, round-robin or random"),
    _Option("first_token_timeout_s", _number, 300.0, "request sent to first byte back, else 504"),
    _Option("body_timeout_s", _number, 30.0, "time to receive a request body, else 408"),
    _Option("queue_max", _integer, 256, "requests waiting for capacity per model, else 503"),
    _Option("queue_timeout_s", _number, 30.0, "longest wait for capacity, then 503"),
    _Option("breaker_failures", _integer, 2, "failures in a row that put a worker aside"),
    _Option("breaker_open_s", _number, 1.0, "first time a worker is put aside (doubles, <= 30)"),
    # -- end of overload and faults --
)


def _flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def _env_name(field: str) -> str:
    return "ROUTER_" + field.upper()


def parse_config(argv: Sequence[str] | None, environ: Mapping[str, str]) -> RouterConfig:
    """Flags over environment over defaults; any invalid value exits 2 via argparse."""
    parser = argparse.ArgumentParser(
        prog="python -m router",
        description="OpenAI-compatible load-balancing router for llama.cpp workers.",
    )
    parser.add_argument(
        "--redis-url", help="Redis URL (env ROUTER_REDIS_URL or REDIS_URL); required"
    )
    for opt in _OPTIONS:
        # Raw strings here, parsed below, so env and flag values share one error path.
        parser.add_argument(
            _flag(opt.field),
            help=f"{opt.help} (env {_env_name(opt.field)}, default {opt.default})",
        )
    args = parser.parse_args(argv)

    sources: dict[str, str] = {}
    redis_url = None
    for source, value in (
        ("--redis-url", args.redis_url),
        ("ROUTER_REDIS_URL", environ.get("ROUTER_REDIS_URL")),
        ("REDIS_URL", environ.get("REDIS_URL")),
    ):
        if value:
            redis_url, sources["redis_url"] = value, source
            break
    if redis_url is None:
        parser.error("--redis-url is required (or set REDIS_URL)")
    values: dict[str, Any] = {}
    for opt in _OPTIONS:
        flag_value = getattr(args, opt.field)
        raw, source = (
            (flag_value, _flag(opt.field))
            if flag_value is not None
            else (environ.get(_env_name(opt.field)), _env_name(opt.field))
        )
        if raw is None:
            continue
        try:
            values[opt.field] = opt.parse(raw)
        except ValueError:
            parser.error(f"{source}: invalid value {raw!r}")
        sources[opt.field] = source
    try:
        return RouterConfig(redis_url=redis_url, **values)
    except ValueError as exc:
        # Name the flag or variable the user wrote, not the dataclass field.
        field, _, rest = str(exc).partition(" ")
        parser.error(f"{sources[field]} {rest}" if field in sources else str(exc))


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_config(argv, os.environ)
    logging.basicConfig(
        level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    loop = _new_loop()
    logger.info(
        "router listening on %s:%s (redis %s, loop %s)",
        config.host,
        config.port,
        _redacted(config.redis_url),
        type(loop).__module__,
    )
    # Shutdown on SIGTERM/SIGINT, as run_app sequences it: stop accepting connections, let
    # in-flight requests finish for up to shutdown_timeout_s, cancel what remains, then run the
    # cleanup contexts in reverse (watcher, worker session, Redis client).
    web.run_app(
        create_app(config),
        host=config.host,
        port=config.port,
        loop=loop,
        shutdown_timeout=config.shutdown_timeout_s,
        # A client that hangs up cancels its handler, which closes the upstream request so the
        # worker stops generating.
        handler_cancellation=True,
        # One access-log line per request costs more than the routing itself; on only at DEBUG.
        access_log=logging.getLogger("aiohttp.access") if config.log_level == "DEBUG" else None,
        print=None,
    )
    return 0


def _redacted(url: str) -> str:
    """The URL without its password, which must never reach a log."""
    head, sep, tail = url.rpartition("@")
    if not sep:
        return url
    scheme, _, _ = head.partition("://")
    return f"{scheme}://***@{tail}"
