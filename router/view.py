"""This replica's live view of the worker registry: which workers serve which model, and how loaded.

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
or a worker's slots; router.admission wakes its queue on them. router.watcher feeds the view.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Final

from contract.errors import ApiError, ModelNotFound, ServiceUnavailable
from contract.registry import Event, EventType, Snapshot, WorkerRecord, WorkerState
from router.upstream import Upstream

logger = logging.getLogger(__name__)

Clock = Callable[[], float]
Listener = Callable[[], None]
RECOVERY_GRACE: Final = 2.0  # stale times a recovered Redis gets to list every live worker again
NO_WORKER_RETRY_AFTER_S: Final = 1.0


class RegistryView:
    """The workers this replica knows, indexed for requests: `ready` maps a model to its READY
    upstreams, `models` every model ever served. Written only by the watcher's events and full
    reads (and aged by `expire`); requests read it without awaiting anything."""

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

    def no_worker(self, model: str) -> ApiError:
        """What a request for `model` gets when no worker of it can be tried."""
        if model in self.models:
            return ServiceUnavailable(
                f"No worker is serving model `{model}` right now; retry shortly.",
                retry_after_s=NO_WORKER_RETRY_AFTER_S,
            )
        if self.loaded_at is None:
            # Before the first registry read every model looks unknown; do not call it missing.
            return ServiceUnavailable(
                "The router has not loaded the worker registry yet; retry shortly.",
                retry_after_s=NO_WORKER_RETRY_AFTER_S,
            )
        return ModelNotFound(model)

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
        old = upstream.record
        upstream.update(record, reported=advanced)
        if record.state != old.state or record.model != old.model or record.url != old.url:
            self.models.setdefault(record.model, record.started_ms // 1000)
            self._rebuild()
        elif record.started_ms != old.started_ms or record.slots != old.slots:
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
