"""Typed application keys: the worker's dependency injection, read as `request.app[key]`."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from worker.config import WorkerConfig
    from worker.engine import Engine
    from worker.heartbeat import Heartbeat
    from worker.metrics import WorkerMetrics
    from worker.slots import SlotQueue

CONFIG: web.AppKey[WorkerConfig] = web.AppKey("config")
ENGINE: web.AppKey[Engine] = web.AppKey("engine")
SLOTS: web.AppKey[SlotQueue] = web.AppKey("slots")
METRICS: web.AppKey[WorkerMetrics] = web.AppKey("metrics")
REDIS: web.AppKey[Redis[Any]] = web.AppKey("redis")
HEARTBEAT: web.AppKey[Heartbeat] = web.AppKey("heartbeat")
STARTED_S = web.AppKey("started_s", int)  # unix seconds; the model object's `created`
# False: the owner of the listening socket registers the worker once it accepts connections.
REGISTER_ON_STARTUP = web.AppKey("register_on_startup", bool)
# Set once the engine failed and the worker left the registry (worker.liveness): time to exit.
ENGINE_FAILED = web.AppKey("engine_failed", asyncio.Event)
