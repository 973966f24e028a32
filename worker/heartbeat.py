"""The worker's life in the registry: register, heartbeat, drain, deregister.

Each heartbeat writes the full record with a TTL (`contract.registry.publish_worker`, under the
config's Redis prefix), so a worker killed with -9 expires within one TTL, and a worker that lost
Redis for a while re-registers by itself on the first heartbeat that gets through; each
registration also prunes the index of records that expired (routers only read the registry).
The loop publishes every interval, or sooner when the slot queue reports a change in load, at
most `1 / MIN_GAP_S` times a second. With an engine that keeps a prompt cache (`cache`), every
record carries the prefix digests it holds (worker.engine.PrefixCache), so what routers believe
a worker caches is at most one heartbeat old: a request's end changes the load and so triggers
a publish, and a restarted worker's first record holds none. While Redis is unreachable the
loop retries with jittered exponential backoff capped at MAX_BACKOFF_S, which is kept below the
routers' default stale time (2.5 s) so that a router which finds Redis back (perhaps empty) sees
this worker again before it would give it up; serving requests never depends on it.

Shutdown, in order (see `worker.app.registry_ctx` and `worker.cli`):
  1. drain: the slot queue refuses new requests (503) and routers hear EventType.DRAIN;
  2. in-flight and queued requests finish, up to drain_timeout_s;
  3. the heartbeat loop stops, so no late heartbeat can re-create the record;
  4. the record is removed (EventType.LEAVE);
  5. the Redis client closes, then the engine (its own cleanup_ctx, torn down after this one).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from dataclasses import replace
from typing import Any

from redis.asyncio import Redis

from contract.registry import (
    EventType,
    WorkerApi,
    WorkerRecord,
    WorkerState,
    now_ms,
    prune_workers,
    publish_worker,
)
from contract.registry import remove_worker as registry_remove_worker
from worker.config import WorkerConfig
from worker.engine import PrefixCache
from worker.slots import SlotQueue

logger = logging.getLogger(__name__)

MIN_GAP_S = 0.05  # coalesce bursts of load changes: at most ~20 publishes a second
MAX_BACKOFF_S = 2.0
JITTER = 0.2  # each backoff is shortened by up to this fraction, so workers spread out
REDIS_TIMEOUT_S = 2.0  # every Redis call is bounded; a hung Redis must not hang the worker


class Heartbeat:
    def __init__(
        self,
        redis: Redis[Any],
        config: WorkerConfig,
        slots: SlotQueue,
        *,
        device: str,
        api: WorkerApi = WorkerApi.XERO,
        cache: PrefixCache | None = None,
    ) -> None:
        """`device` and `api` say what serves at the advertised URL: our engine, or a stock
        server that worker.agent registers (api OPENAI); `cache` names what its KV cache holds."""
        self._redis = redis
        self._cache = cache
        self._config = config
        self._slots = slots
        self._record = WorkerRecord(
            worker_id=config.worker_id,
            model=config.model_id,
            url=config.advertise_url,
            state=WorkerState.READY,
            slots=slots.slots,
            running=0,
            waiting=0,
            max_queue=slots.max_queue,
            device=device,
            started_ms=now_ms(),
            heartbeat_ms=now_ms(),
            api=api,
        )
        self._registered = False
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._drain_task: asyncio.Task[None] | None = None
        self._rng = random.Random()

    async def start(self) -> None:
        """Register now if Redis answers (else the loop keeps trying), then start the loop."""
        try:
            await self._publish()
        except Exception:
            logger.exception(
                "could not register worker %s; will keep retrying", self._record.worker_id
            )
        self._task = asyncio.create_task(self._run(), name="worker-heartbeat")

    async def drain(self) -> None:
        """Steps 1-2 of shutdown. Idempotent: later callers wait for the same drain."""
        if self._drain_task is None:
            self._drain_task = asyncio.create_task(self._drain(), name="worker-drain")
        await asyncio.shield(self._drain_task)

    async def stop(self) -> None:
        """Steps 3-4 of shutdown."""
        if self._task is not None:
            # Flag and wake as well as cancel: on Python 3.11 a cancel that lands as a Redis
            # reply arrives can be swallowed by asyncio.wait_for inside redis-py.
            self._stopping.set()
            self._slots.load_changed.set()
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        try:
            async with asyncio.timeout(REDIS_TIMEOUT_S):
                await registry_remove_worker(
                    self._redis,
                    self._record.worker_id,
                    self._record.model,
                    keyspace=self._config.keyspace,
                )
        except Exception:
            logger.exception(
                "could not deregister worker %s; its record will expire", self._record.worker_id
            )
        else:
            logger.info("worker %s deregistered", self._record.worker_id)

    async def _drain(self) -> None:
        logger.info(
            "draining: refusing new requests, waiting up to %ss for %d running and %d waiting",
            self._config.drain_timeout_s,
            self._slots.running,
            self._slots.waiting,
        )
        self._slots.start_draining()
        try:
            await self._publish(EventType.DRAIN)
        except Exception:
            logger.exception("could not announce drain")
        if not await self._slots.wait_idle(self._config.drain_timeout_s):
            logger.warning(
                "drain timed out with %d running and %d waiting; cancelling them",
                self._slots.running,
                self._slots.waiting,
            )

    async def _publish(self, event: EventType | None = None) -> None:
        slots = self._slots
        state = WorkerState.DRAINING if slots.draining else WorkerState.READY
        cached = None if self._cache is None else self._cache.cached_prefixes()
        self._record = self._record.with_load(slots.running, slots.waiting, cached)
        if self._record.state is not state:
            self._record = replace(self._record, state=state)
        if event is None:
            # A fresh (re-)registration is announced as a join, so routers learn of it at once.
            event = EventType.LOAD if self._registered else EventType.JOIN
        keyspace = self._config.keyspace
        async with asyncio.timeout(REDIS_TIMEOUT_S):
            await publish_worker(
                self._redis, self._record, self._config.heartbeat_ttl_ms, event, keyspace=keyspace
            )
        if not self._registered:
            logger.info(
                "worker %s registered for model %s at %s",
                self._record.worker_id,
                self._record.model,
                self._record.url,
            )
            self._registered = True
            await self._prune()

    async def _prune(self) -> None:
        """Best effort: a failed prune is retried at the next registration."""
        try:
            async with asyncio.timeout(REDIS_TIMEOUT_S):
                dead = await prune_workers(self._redis, keyspace=self._config.keyspace)
        except Exception as exc:
            logger.warning("could not prune expired workers from the registry: %r", exc)
            return
        if dead:
            logger.info("pruned %d expired worker id(s) from the registry", len(dead))

    async def _run(self) -> None:
        interval = self._config.heartbeat_interval_s
        loop = asyncio.get_running_loop()
        backoff = interval
        failing = False
        while True:
            if not failing:  # a failing loop has just slept its backoff
                await self._wait_for_change(interval)
            if self._stopping.is_set():
                return
            started = loop.time()
            try:
                await self._publish()
            except Exception:
                delay = backoff * (1 - self._rng.uniform(0, JITTER))
                # Log the first failure of a streak with its traceback, the rest briefly.
                if not failing:
                    logger.exception("heartbeat failed; retrying in %.1fs", delay)
                else:
                    logger.warning("heartbeat still failing; next try in %.1fs", delay)
                failing, self._registered = True, False
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._stopping.wait()
                backoff = min(backoff * 2, MAX_BACKOFF_S)
                continue
            if failing:
                logger.info("heartbeat recovered")
            failing, backoff = False, interval
            await asyncio.sleep(max(0.0, started + MIN_GAP_S - loop.time()))

    async def _wait_for_change(self, timeout_s: float) -> None:
        changed = self._slots.load_changed
        try:
            async with asyncio.timeout(timeout_s):
                await changed.wait()
        except TimeoutError:
            pass
        changed.clear()
