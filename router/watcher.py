"""The background loops that keep a RegistryView fresh from Redis: events, full reads, ageing.

Each loop catches, logs and backs off on its own (`Backoff`), so a Redis outage never ends one;
the view keeps serving meanwhile (router.view says how it ages then).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Final

from contract.keyspace import DEFAULT_KEYSPACE, Keyspace
from contract.registry import EVENTS_CHANNEL, Event, EventType, InvalidRecord, read_snapshot
from router.metrics import RegistryOp
from router.view import Clock

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from router.metrics import RouterMetrics
    from router.view import RegistryView

logger = logging.getLogger(__name__)

REDIS_BACKOFF_CAP_S: Final = 2.0  # longest pause between two tries to reach a failing Redis
INVALID_LOG_EVERY_S: Final = 60.0  # a lingering bad record is logged this often, not per read


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


class LogOnce:
    """Says whether to log about a key now: at most once per `every_s` each, for up to
    `max_keys` keys at a time (past that, a flood of distinct keys is counted, not logged)."""

    def __init__(self, every_s: float, clock: Clock, max_keys: int = 1024) -> None:
        self._every_s = every_s
        self._clock = clock
        self._max_keys = max_keys
        self._logged_at: dict[str, float] = {}

    def due(self, key: str) -> bool:
        now = self._clock()
        last = self._logged_at.get(key)
        if last is not None and now - last < self._every_s:
            return False
        if last is None and len(self._logged_at) >= self._max_keys:
            self._logged_at = {k: t for k, t in self._logged_at.items() if now - t < self._every_s}
            if len(self._logged_at) >= self._max_keys:
                return False
        self._logged_at[key] = now
        return True


class RegistryWatcher:
    """Three background loops over one view: events, periodic full reads, and ageing.

    A record or event that fails validation (contract.registry.InvalidRecord) is skipped,
    counted in router_registry_invalid_records_total and logged once a while per worker; the
    rest of the read, and the event stream, carry on.
    """

    def __init__(
        self,
        redis: Redis[bytes],
        view: RegistryView,
        metrics: RouterMetrics,
        *,
        refresh_s: float,
        read_timeout_s: float = 5.0,
        keyspace: Keyspace = DEFAULT_KEYSPACE,
        clock: Clock = time.monotonic,
    ) -> None:
        self._redis = redis
        self._view = view
        self._metrics = metrics
        self._refresh_s = refresh_s
        self._read_timeout_s = read_timeout_s
        self._keyspace = keyspace
        self._clock = clock
        self._log_invalid = LogOnce(INVALID_LOG_EVERY_S, clock)
        for source in (RegistryOp.READ, RegistryOp.EVENTS):
            metrics.registry_invalid_records.labels(source)  # exported as 0 until one comes
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
                snapshot = await read_snapshot(self._redis, keyspace=self._keyspace)
        except Exception as exc:
            # The reason in the message too: a wrong password reads plainly in one line.
            logger.warning(
                "registry: full read failed: %s: %s", type(exc).__name__, exc, exc_info=True
            )
            self._metrics.registry_errors.labels(RegistryOp.READ).inc()
            self._view.contact_lost()
            return False
        for invalid in snapshot.invalid:
            self._skipped(invalid, RegistryOp.READ)
        try:
            self._view.apply_snapshot(snapshot, started)
        except Exception:
            logger.exception("registry: applying a full read failed")
            self._metrics.registry_errors.labels(RegistryOp.READ).inc()
            return False
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
                self._metrics.registry_errors.labels(RegistryOp.EVENTS).inc()
                await asyncio.sleep(delay)

    async def _follow_events(self, backoff: Backoff) -> None:
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(self._keyspace.key(EVENTS_CHANNEL))
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
        except InvalidRecord as invalid:
            self._skipped(invalid, RegistryOp.EVENTS)
            return
        try:
            self._view.apply_event(event)
        except Exception:
            logger.exception("registry: applying an event of worker %r failed", event.worker_id)
            return
        if event.type is not EventType.LOAD:
            logger.info("registry: worker %s %s", event.worker_id, event.type.value)

    def _skipped(self, invalid: InvalidRecord, source: RegistryOp) -> None:
        self._metrics.registry_invalid_records.labels(source).inc()
        if self._log_invalid.due(invalid.worker_id or invalid.reason):
            logger.warning(
                "registry: skipped an invalid %s of worker %r: %s (logged once per %.0fs)",
                "record" if source is RegistryOp.READ else "event",
                invalid.worker_id,
                invalid.reason,
                INVALID_LOG_EVERY_S,
            )

    async def _expire_loop(self) -> None:
        tick_s = min(0.1, self._view.stale_s / 10)
        while True:
            await asyncio.sleep(tick_s)
            try:
                for worker_id in self._view.expire():
                    logger.warning("registry: worker %s went silent; dropped", worker_id)
            except Exception:
                logger.exception("registry: ageing sweep failed")
