"""This replica's live view of the worker registry, and the watcher that keeps it fresh.

The view is loaded with one full read, then kept current by the registry's pub/sub events (each
carries the whole record, so applying one needs no round trip) and a periodic full re-read that
repairs anything an event missed. It is also aged by this router's own monotonic clock: a worker
whose heartbeat we have not seen advance for `stale_s` leaves the view, so one killed with -9
disappears in about `stale_s` even while its Redis key lingers, and clock skew between hosts does
not matter. Requests read only in-memory state: `ready` (model -> READY upstreams) is rebuilt
when membership or a state changes, never per request, and load reports update the `Upstream`
objects in place.

When Redis is unreachable nothing in the view can be confirmed or refuted, so ageing pauses and
the last view keeps serving; `registry_age_s()` (a metric) tells how old it is. When it answers
again after a failure (the watcher calls `contact_lost()`), it may have restarted empty, so for
RECOVERY_GRACE x `stale_s` nothing is dropped for being absent from a full read or for a silent
heartbeat: live workers re-register well within that (their heartbeat retries every <= 2 s),
dead ones are aged out after it (meanwhile the breaker keeps requests off them).

Listeners (`add_listener`) hear of every change that can free capacity: membership, a state,
or a worker's slots; router.admission wakes its queue on them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from yarl import URL

from contract.registry import (
    EVENTS_CHANNEL,
    Event,
    EventType,
    Snapshot,
    WorkerRecord,
    WorkerState,
    read_snapshot,
)
from router.balancer import WorkerLoad
from router.breaker import Breaker

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from router.metrics import RouterMetrics

logger = logging.getLogger(__name__)

Clock = Callable[[], float]
Listener = Callable[[], None]
CHAT_PATH = "/v1/chat/completions"
REDIS_BACKOFF_CAP_S: Final = 2.0  # longest pause between two tries to reach a failing Redis
RECOVERY_GRACE: Final = 2.0  # stale times a recovered Redis gets to list every live worker again


def chat_url(base_url: str) -> URL:
    return URL(base_url.rstrip("/") + CHAT_PATH)


class Upstream(WorkerLoad):
    """One worker as this replica sees it: its latest record and local load counters."""

    __slots__ = ("breaker", "chat_url", "record", "seen_at")

    def __init__(self, record: WorkerRecord, seen_at: float) -> None:
        super().__init__(record.worker_id, record.queue_depth, record.slots)
        self.record = record
        self.seen_at = seen_at  # our clock, when we last saw its heartbeat advance
        self.chat_url = chat_url(record.url)  # parsed once, not per request
        self.breaker = Breaker()


class RegistryView:
    def __init__(self, stale_s: float, clock: Clock = time.monotonic) -> None:
        self.stale_s = stale_s
        self._clock = clock
        # Ageing pauses once Redis has been silent this long. Half the stale time is well over
        # one heartbeat period, so a live worker is never aged out for an outage's sake.
        self._contact_window_s = stale_s / 2
        self.upstreams: dict[str, Upstream] = {}
        self.models: dict[str, int] = {}  # every model ever served -> created (unix s)
        self.ready: dict[str, tuple[Upstream, ...]] = {}  # the request-time index
        # Newest heartbeat seen per worker id, kept after it leaves the view so a lingering
        # Redis key of a dead worker is not taken for a live one.
        self._last_heartbeat_ms: dict[str, int] = {}
        self.loaded_at: float | None = None  # our clock, last successful full read
        self._contact_at = -math.inf
        self._lost = False  # a Redis operation failed since the last contact
        self._absence_grace_until = -math.inf
        self._listeners: list[Listener] = []

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def contact_lost(self) -> None:
        """The watcher failed to reach Redis; the next contact is a recovery."""
        self._lost = True

    def _contact(self, now: float) -> None:
        if self._lost:
            # Redis is back, perhaps empty: give every worker stale_s to show itself again.
            self._lost = False
            grace_s = RECOVERY_GRACE * self.stale_s
            self._absence_grace_until = now + grace_s
            for upstream in self.upstreams.values():
                # Aged from the end of the grace on, as if seen a stale time before it ends.
                upstream.seen_at = max(upstream.seen_at, now + grace_s - self.stale_s)
        self._contact_at = now

    def candidates(self, model: str) -> tuple[Upstream, ...]:
        return self.ready.get(model, ())

    def registry_age_s(self) -> float | None:
        """Seconds since the last successful full read; None before the first."""
        if self.loaded_at is None:
            return None
        return self._clock() - self.loaded_at

    def apply_event(self, event: Event) -> None:
        now = self._clock()
        self._contact(now)
        record = event.record
        if event.type is EventType.LEAVE or record is None:
            self._drop(event.worker_id)
            return
        last = self._last_heartbeat_ms.get(record.worker_id)
        if last is not None and record.heartbeat_ms < last:
            return  # overtaken by a newer report
        # An event is itself proof of life, even one (a drain) that keeps the heartbeat stamp.
        self._admit(record, now, advanced=last is None or record.heartbeat_ms > last, seen=True)

    def apply_snapshot(self, snapshot: Snapshot, started_at: float) -> None:
        """Merge a full read that began at `started_at` (our clock)."""
        now = self._clock()
        self._contact(now)
        self.loaded_at = now
        for worker_id, record in snapshot.workers.items():
            last = self._last_heartbeat_ms.get(worker_id)
            advanced = last is None or record.heartbeat_ms > last
            if not advanced and worker_id not in self.upstreams:
                continue  # a departed or aged-out worker whose key has not expired yet
            if last is None or record.heartbeat_ms >= last:
                self._admit(record, now, advanced=advanced, seen=False)
        if now >= self._absence_grace_until:
            for worker_id, upstream in list(self.upstreams.items()):
                # Spare a worker whose event arrived while the read was under way.
                if worker_id not in snapshot.workers and upstream.seen_at < started_at:
                    self._drop(worker_id)
        for worker_id in [w for w in self._last_heartbeat_ms if w not in snapshot.workers]:
            if worker_id not in self.upstreams:
                del self._last_heartbeat_ms[worker_id]
        self.models.update(snapshot.models)

    def expire(self) -> list[str]:
        """Drop workers whose heartbeat has not advanced for stale_s; return their ids."""
        now = self._clock()
        if now - self._contact_at > self._contact_window_s:
            return []  # Redis is silent: a dead worker and a dead registry look alike
        cutoff = now - self.stale_s
        dead = [w for w, u in self.upstreams.items() if u.seen_at < cutoff]
        for worker_id in dead:
            self._drop(worker_id)
        return dead

    def _admit(self, record: WorkerRecord, now: float, *, advanced: bool, seen: bool) -> None:
        worker_id = record.worker_id
        if advanced:
            self._last_heartbeat_ms[worker_id] = record.heartbeat_ms
        upstream = self.upstreams.get(worker_id)
        if upstream is None:
            self.upstreams[worker_id] = Upstream(record, now)
            self.models.setdefault(record.model, record.started_ms // 1000)
            self._rebuild()
            return
        if advanced or seen:
            upstream.seen_at = now
        if advanced:
            upstream.report(record.queue_depth)
        old = upstream.record
        upstream.record = record
        if record.url != old.url:
            upstream.chat_url = chat_url(record.url)
        restarted = record.url != old.url or record.started_ms != old.started_ms
        if restarted:
            upstream.breaker = Breaker()  # another process now: judge it afresh
        upstream.slots = max(1, record.slots)
        if record.state != old.state or record.model != old.model or record.url != old.url:
            self.models.setdefault(record.model, record.started_ms // 1000)
            self._rebuild()
        elif restarted or record.slots != old.slots:
            self._notify()  # room may have appeared

    def _drop(self, worker_id: str) -> None:
        # Requests already dispatched keep their Upstream object and finish normally.
        if self.upstreams.pop(worker_id, None) is not None:
            self._rebuild()

    def _rebuild(self) -> None:
        ready: dict[str, list[Upstream]] = {}
        for upstream in self.upstreams.values():
            if upstream.record.state is WorkerState.READY:
                ready.setdefault(upstream.record.model, []).append(upstream)
        self.ready = {model: tuple(ups) for model, ups in ready.items()}
        self._notify()

    def _notify(self) -> None:
        for listener in self._listeners:
            try:
                listener()
            except Exception:
                logger.exception("registry: a view listener failed")


def _honour_cancellation() -> None:
    """Raise if this task was cancelled while a Redis call swallowed the CancelledError.

    redis-py 8.1 sometimes finishes a command normally when cancelled mid-command (seen in
    tests), leaving the task marked as cancelling; a loop must then stop by itself.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class Backoff:
    """Exponential delays for retrying a failing loop: 0.1 s doubling up to a cap."""

    def __init__(self, first_s: float = 0.1, cap_s: float = 5.0) -> None:
        self._first_s = first_s
        self._cap_s = cap_s
        self._next_s = first_s

    def next(self) -> float:
        delay = self._next_s
        self._next_s = min(self._cap_s, delay * 2)
        return delay

    def reset(self) -> None:
        self._next_s = self._first_s


class RegistryWatcher:
    """Three background loops over one view: events, periodic full reads, and ageing."""

    def __init__(
        self,
        redis: Redis[bytes],
        view: RegistryView,
        metrics: RouterMetrics,
        *,
        refresh_s: float,
        read_timeout_s: float = 5.0,
        clock: Clock = time.monotonic,
    ) -> None:
        self._redis = redis
        self._view = view
        self._metrics = metrics
        self._refresh_s = refresh_s
        self._read_timeout_s = read_timeout_s
        self._clock = clock
        self._refresh_now = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Load the first view (best effort: Redis may come later), then start the loops."""
        if not await self.refresh():
            logger.warning("registry: first read failed; serving an empty view until Redis answers")
        _honour_cancellation()
        self._tasks = [
            asyncio.create_task(self._events_loop(), name="registry-events"),
            asyncio.create_task(self._refresh_loop(), name="registry-refresh"),
            asyncio.create_task(self._expire_loop(), name="registry-expire"),
        ]

    async def close(self) -> None:
        pending = set(self._tasks)
        while pending:
            # Cancelled again if still running: see _honour_cancellation.
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=1.0)
        self._tasks = []

    async def refresh(self) -> bool:
        """One full read merged into the view; False (logged, counted) if it failed."""
        started = self._clock()
        try:
            async with asyncio.timeout(self._read_timeout_s):
                snapshot = await read_snapshot(self._redis)
        except Exception:
            logger.warning("registry: full read failed", exc_info=True)
            self._metrics.registry_errors.labels("read").inc()
            self._view.contact_lost()
            return False
        self._view.apply_snapshot(snapshot, started)
        return True

    async def _refresh_loop(self) -> None:
        backoff = Backoff(cap_s=max(REDIS_BACKOFF_CAP_S, self._refresh_s))
        delay = self._refresh_s  # start() has just read
        failing = False
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._refresh_now.wait()
            self._refresh_now.clear()
            if await self.refresh():
                if failing:
                    logger.info("registry: full reads succeed again")
                failing = False
                backoff.reset()
                delay = self._refresh_s
            else:
                failing = True
                delay = backoff.next()
            _honour_cancellation()

    async def _events_loop(self) -> None:
        backoff = Backoff(cap_s=REDIS_BACKOFF_CAP_S)
        while True:
            try:
                await self._follow_events(backoff)
            except Exception:
                _honour_cancellation()
                self._view.contact_lost()
                delay = backoff.next()
                logger.warning(
                    "registry: event subscription lost; resubscribing in %.1fs",
                    delay,
                    exc_info=True,
                )
                self._metrics.registry_errors.labels("events").inc()
                await asyncio.sleep(delay)

    async def _follow_events(self, backoff: Backoff) -> None:
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(EVENTS_CHANNEL)
            # Subscribed first, read second: no event can fall between the two.
            self._refresh_now.set()
            backoff.reset()
            _honour_cancellation()
            async for message in pubsub.listen():
                _honour_cancellation()
                if message.get("type") == "message":
                    self._apply(message["data"])
        finally:
            await pubsub.aclose()  # type: ignore[attr-defined]  # types-redis predates it

    def _apply(self, data: bytes | str) -> None:
        try:
            event = Event.decode(data)
        except (ValueError, KeyError, TypeError):
            logger.warning("registry: ignored a malformed event", exc_info=True)
            self._metrics.registry_errors.labels("decode").inc()
            return
        self._view.apply_event(event)
        if event.type is not EventType.LOAD:
            logger.info("registry: worker %s %s", event.worker_id, event.type.value)

    async def _expire_loop(self) -> None:
        tick_s = min(0.1, self._view.stale_s / 10)
        while True:
            await asyncio.sleep(tick_s)
            try:
                for worker_id in self._view.expire():
                    logger.warning("registry: worker %s went silent; dropped", worker_id)
            except Exception:
                logger.exception("registry: ageing sweep failed")
