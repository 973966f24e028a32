"""`python -m worker.agent`: put a running OpenAI-compatible server in the registry.

    python -m worker.agent --upstream http://127.0.0.1:8080 --model-id smollm2 \\
        --redis-url redis://127.0.0.1:6379/0 [--kind llama-server|openai] [--slots N]

The registrar runs beside a stock server (llama.cpp's `llama-server`, or any OpenAI-compatible
one with `--kind openai`) and keeps its record alive exactly as our worker keeps its own
(worker.heartbeat: same schema, TTL, drain and deregistration), with `api: openai`, so routers
relay to it without our usage trailer (router.exchange). Health and load come from the server
(worker.upstream_probe): while it does not answer its health check the record reads draining,
and routers send it nothing.

Routers send the worker secret (contract.secrets) as `Authorization: Bearer ...` to every worker;
start llama-server with the same secret (`--api-key`) so that only routers reach it. The agent
reads the secret the same way to read `/slots`, which llama-server guards with it.

Shutdown on SIGTERM/SIGINT, in order: 1. drain (routers hear DRAIN; wait up to drain_timeout_s
for the server's busy slots); 2. stop the heartbeat; 3. remove the record; 4. stop watching the
server and close Redis. Exit 0; 2 for a bad option.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from aiohttp import ClientSession
from redis.asyncio import Redis

from contract.keyspace import check_prefix
from contract.logs import LogFormat, configure
from contract.options import ConfigError, LogLevel, Options, check_one_of, member, meta, require
from contract.registry import WorkerApi, name_problem, url_problem
from contract.secrets import SECRET_ENV, load_secret, secret_file
from worker.config import WorkerConfig
from worker.heartbeat import REDIS_TIMEOUT_S, Heartbeat
from worker.upstream_probe import (
    UPSTREAM_KINDS,
    UpstreamKind,
    UpstreamProbe,
    UpstreamSlots,
    watch,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class AgentConfig:
    upstream: str = field(metadata=meta("base URL of the server to register", metavar="URL"))
    model_id: str = field(metadata=meta("model id it serves (the request's `model`)"))
    redis_url: str = field(
        metadata=meta("Redis URL for the registry", env=("REDIS_URL",), metavar="URL")
    )
    redis_prefix: str = field(
        default="", metadata=meta("prefix of every Redis key and channel, as on the routers")
    )
    kind: UpstreamKind = field(
        default="llama-server",
        metadata=meta("llama-server: slots and load from /slots; openai: any other server"),
    )
    slots: int | None = field(
        default=None,
        metadata=meta("requests it runs at once; auto: llama-server's /slots, else 1"),
    )
    advertise_url: str = field(
        default="", metadata=meta("URL routers use to reach the server; unset: the upstream")
    )
    worker_id: str = field(default="", metadata=meta("registry id; unset: HOST-PORT-random"))
    worker_secret_file: str | None = field(
        default=None,
        metadata=meta(
            f"file holding the secret routers send (else ${SECRET_ENV}); give the server the "
            "same (llama-server --api-key)",
            parse=secret_file,
            metavar="PATH",
        ),
    )
    device: str = field(default="cpu", metadata=meta("device the server runs on: cpu or gpu"))
    probe_timeout_s: float = field(
        default=1.0, metadata=meta("seconds a health or load read of the server may take")
    )
    heartbeat_interval_s: float = field(default=0.5, metadata=meta("seconds between heartbeats"))
    heartbeat_ttl_s: float = field(
        default=2.0, metadata=meta("seconds the registry record lives unrefreshed")
    )
    drain_timeout_s: float = field(
        default=30.0, metadata=meta("seconds to wait for the server's busy slots on shutdown")
    )
    log_level: LogLevel = field(default=LogLevel.INFO, metadata=meta("log level"))
    log_format: LogFormat = field(
        default=LogFormat.TEXT, metadata=meta("log lines as text, or one JSON object each")
    )

    def __post_init__(self) -> None:
        check_one_of("kind", self.kind, UPSTREAM_KINDS)
        check_prefix(self.redis_prefix)
        require(self.slots is None or self.slots >= 1, "slots: expected >= 1")
        require(self.probe_timeout_s > 0, "probe_timeout_s: expected > 0")
        require(self.drain_timeout_s >= 0, "drain_timeout_s: expected >= 0")
        object.__setattr__(self, "log_level", member("log_level", self.log_level, LogLevel))
        object.__setattr__(self, "log_format", member("log_format", self.log_format, LogFormat))
        require(url_problem(self.upstream, "upstream") is None, url_problem(self.upstream) or "")
        upstream = self.upstream.rstrip("/")
        object.__setattr__(self, "upstream", upstream)
        object.__setattr__(self, "advertise_url", self.advertise_url.rstrip("/") or upstream)
        if not self.worker_id:
            parts = urlsplit(upstream)
            worker_id = f"{parts.hostname}-{parts.port or 80}-{secrets.token_hex(3)}"
            object.__setattr__(self, "worker_id", worker_id)
        for problem in (
            name_problem("model_id", self.model_id),
            name_problem("worker_id", self.worker_id),
            name_problem("device", self.device),
            url_problem(self.advertise_url, "advertise_url"),
        ):
            require(problem is None, problem or "")

    def worker_config(self, slots: int) -> WorkerConfig:
        """The registry identity and timings worker.heartbeat reads, as our worker's."""
        return WorkerConfig(
            model_id=self.model_id,
            redis_url=self.redis_url,
            redis_prefix=self.redis_prefix,
            engine="fake",  # no engine of ours: WorkerConfig then needs no model file
            worker_id=self.worker_id,
            advertise_url=self.advertise_url,
            slots=slots,
            max_queue=0,
            heartbeat_interval_s=self.heartbeat_interval_s,
            heartbeat_ttl_s=self.heartbeat_ttl_s,
            drain_timeout_s=self.drain_timeout_s,
        )


OPTIONS = Options(
    AgentConfig,
    env_prefix="AGENT_",
    prog="python -m worker.agent",
    description="Register a running OpenAI-compatible server (llama-server) as a worker.",
)


def load_config(argv: Sequence[str] | None, environ: Mapping[str, str]) -> AgentConfig:
    return OPTIONS.load(argv, environ)


async def serve(config: AgentConfig, secret: str | None, stop: asyncio.Event) -> None:
    """Register the server once it answers, keep it registered until `stop`, then leave."""
    headers = {"Authorization": f"Bearer {secret}"} if secret else None
    async with ClientSession(headers=headers, trust_env=False) as session:
        probe = UpstreamProbe(session, config.upstream, config.kind, config.probe_timeout_s)
        reading = await probe.read()
        while not reading.healthy:  # not registered before the server can serve
            logger.info("waiting for %s to answer its health check", config.upstream)
            try:
                async with asyncio.timeout(config.heartbeat_interval_s):
                    await stop.wait()
                return
            except TimeoutError:
                reading = await probe.read()
        slots = UpstreamSlots(config.slots or reading.slots or 1)
        slots.report(reading)
        redis: Redis[Any] = Redis.from_url(
            config.redis_url,
            socket_timeout=REDIS_TIMEOUT_S,
            socket_connect_timeout=REDIS_TIMEOUT_S,
        )
        heartbeat = Heartbeat(
            redis,
            config.worker_config(slots.slots),
            slots,
            device=config.device,
            api=WorkerApi.OPENAI,  # no usage trailer: routers ask for include_usage instead
        )
        watcher = asyncio.create_task(watch(probe, slots, config.heartbeat_interval_s))
        try:
            await heartbeat.start()
            await stop.wait()
            # 1. Drain: routers hear DRAIN, and the server's busy slots finish (bounded).
            await heartbeat.drain()
            # 2-3. Stop the heartbeat, then remove the record.
            await heartbeat.stop()
        finally:
            # 4. Stop watching the server, close Redis.
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            await redis.aclose()  # type: ignore[attr-defined,unused-ignore]


async def _main(config: AgentConfig, secret: str | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await serve(config, secret, stop)


def main(argv: Sequence[str] | None = None) -> int:
    config = OPTIONS.parse(argv, os.environ)  # exits 2 on a bad value
    try:
        secret = load_secret(config.worker_secret_file, os.environ)
    except ConfigError as exc:
        print(f"python -m worker.agent: error: {exc}", file=sys.stderr)
        return 2
    configure(config.log_level, config.log_format, None)  # it relays no requests
    asyncio.run(_main(config, secret))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
