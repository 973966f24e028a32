"""Wiring: `create_app(config)` builds the worker's aiohttp application; no I/O happens here.

Resources, one cleanup_ctx each, set up in this order and torn down in reverse:
  [metrics listener, with --metrics-port] -> engine (load the model / close it) -> Redis
  client -> registry (register, heartbeat, drain, deregister) -> engine watch (a failed engine
  takes the worker down: worker.liveness). So the worker registers only once the model is
  loaded, and the engine closes only after the worker has left the registry and every request
  is done. The shutdown sequence itself is drawn in worker.heartbeat's docstring.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware
from redis.asyncio import Redis

from worker import appkeys
from worker.auth import SECRET_ENV, auth_middleware
from worker.config import WorkerConfig
from worker.engine import Engine, PrefixCache
from worker.fake_engine import FakeEngine
from worker.handlers import add_routes, error_middleware
from worker.heartbeat import REDIS_TIMEOUT_S, Heartbeat
from worker.liveness import drain, watch_engine_ctx
from worker.metrics import WorkerMetrics
from worker.metrics_listener import metrics_listener_ctx
from worker.slots import SlotQueue
from worker.text_handlers import add_text_routes

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 4 * 1024 * 1024


def build_engine(config: WorkerConfig) -> Engine:
    if config.engine == "fake":
        return FakeEngine(
            ttft_ms=config.fake_ttft_ms,
            tokens_per_s=config.fake_tokens_per_s,
            n_ctx=config.n_ctx,
            slots=config.slots,
            default_max_tokens=config.default_max_tokens or None,
            fail_after_tokens=config.fake_fail_after_tokens,
            prefill_tokens_per_s=config.fake_prefill_tokens_per_s,
            ignore_eos=config.ignore_eos,
        )
    if config.model_path is None:
        raise ValueError(f"the {config.engine} engine needs a model path")
    if config.embedding:
        from worker.embedding_engine import EmbeddingEngine

        return EmbeddingEngine(
            config.model_path,
            n_ctx=config.n_ctx,
            n_gpu_layers=config.n_gpu_layers,
            n_threads=config.n_threads,
        )
    if config.engine == "batched":
        # Lazy: the batched engine is optional and pulls in llama_cpp.
        from worker.batched_engine import BatchedLlamaEngine  # type: ignore[import-not-found,unused-ignore]

        engine: Engine = BatchedLlamaEngine(
            config.model_path,
            n_ctx=config.n_ctx,
            n_gpu_layers=config.n_gpu_layers,
            n_threads=config.n_threads,
            slots=config.slots,
            default_max_tokens=config.default_max_tokens or None,
            ignore_eos=config.ignore_eos,
            prompt_cache_mib=config.prompt_cache_mib,
        )
        return engine
    from worker.llama_engine import LlamaEngine

    if config.slots != 1:
        logger.warning(
            "the llama engine runs one generation at a time; ignoring --slots %d "
            "(use --engine batched for more)",
            config.slots,
        )
    return LlamaEngine(
        config.model_path,
        n_ctx=config.n_ctx,
        n_gpu_layers=config.n_gpu_layers,
        n_threads=config.n_threads,
        default_max_tokens=config.default_max_tokens or None,
        ignore_eos=config.ignore_eos,
    )


async def engine_ctx(app: web.Application) -> AsyncIterator[None]:
    engine = app[appkeys.ENGINE]
    started = time.monotonic()
    await engine.load()
    load_s = time.monotonic() - started
    app[appkeys.METRICS].model_load_seconds.set(load_s)
    logger.info(
        "model %s loaded in %.2fs on %s", app[appkeys.CONFIG].model_id, load_s, engine.device
    )
    yield
    await engine.close()


async def redis_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[appkeys.CONFIG]
    redis: Redis[Any] = Redis.from_url(
        config.redis_url,
        socket_timeout=REDIS_TIMEOUT_S,
        socket_connect_timeout=REDIS_TIMEOUT_S,
    )
    app[appkeys.REDIS] = redis
    yield
    # types-redis 4.6 predates aclose(); close() is deprecated in the redis 5+ we run.
    await redis.aclose()  # type: ignore[attr-defined,unused-ignore]


async def registry_ctx(app: web.Application) -> AsyncIterator[None]:
    """Registers after the engine has loaded (its cleanup_ctx comes first), or leaves that to
    the CLI, which registers once its socket listens (REGISTER_ON_STARTUP)."""
    engine = app[appkeys.ENGINE]
    heartbeat = Heartbeat(
        app[appkeys.REDIS],
        app[appkeys.CONFIG],
        app[appkeys.SLOTS],
        device=engine.device,
        cache=engine if isinstance(engine, PrefixCache) else None,
    )
    app[appkeys.HEARTBEAT] = heartbeat
    if app[appkeys.REGISTER_ON_STARTUP]:
        await heartbeat.start()
    yield
    # 1-2. Drain. The CLI drains before closing the listening socket; run_app and tests reach
    #      here through on_shutdown or directly, and drain() is then a no-op or the only drain.
    await drain(app)
    # 3-4. Stop the heartbeat, then remove the record.
    await heartbeat.stop()
    # 5. redis_ctx and engine_ctx, set up before this one, are torn down after it.


async def drain_on_shutdown(app: web.Application) -> None:
    """on_shutdown runs after the listener closed but while handlers may still run."""
    await drain(app)


def create_app(
    config: WorkerConfig,
    engine: Engine | None = None,
    *,
    register_on_startup: bool = True,
    secret: str | None = None,
) -> web.Application:
    """The worker app; `engine` defaults to the one `config` names (tests may pass their own).
    With `register_on_startup` False the caller starts the heartbeat itself (worker.cli does,
    once its socket listens, so no router is sent to a port that refuses). With a `secret`,
    only requests that carry it are served (worker.auth)."""
    middlewares: list[Middleware] = [error_middleware]
    if secret is not None:
        middlewares.append(auth_middleware(secret))
    else:
        logger.warning(
            "no worker secret (--worker-secret-file or $%s): anything that can reach this "
            "worker's port can use it",
            SECRET_ENV,
        )
    app = web.Application(middlewares=middlewares, client_max_size=MAX_BODY_BYTES)
    engine = engine if engine is not None else build_engine(config)
    slots = SlotQueue(engine.slots, config.max_queue)
    metrics = WorkerMetrics()
    metrics.track_load(slots)
    metrics.track_engine(engine, config.engine)

    app[appkeys.CONFIG] = config
    app[appkeys.ENGINE] = engine
    app[appkeys.SLOTS] = slots
    app[appkeys.METRICS] = metrics
    app[appkeys.STARTED_S] = int(time.time())
    app[appkeys.REGISTER_ON_STARTUP] = register_on_startup
    app[appkeys.ENGINE_FAILED] = asyncio.Event()

    if config.metrics_port is not None:
        app.cleanup_ctx.append(metrics_listener_ctx)
    app.cleanup_ctx.append(engine_ctx)
    app.cleanup_ctx.append(redis_ctx)
    app.cleanup_ctx.append(registry_ctx)
    app.cleanup_ctx.append(watch_engine_ctx)
    app.on_shutdown.append(drain_on_shutdown)
    add_routes(app)
    add_text_routes(app)
    return app
