"""Admission: at most `slots` of this replica's requests on a worker, the rest in a bounded queue.

Admission is the one place that changes an upstream's load and breaker state (router.upstream):
a request begins on a worker when it is granted a place (`acquire`), ends when it gives the place
back (`release`), and the relay reports in between how the worker did (`succeeded`, `refused`
before any answer, `failed` mid-answer).

A worker advertises its slots in its registry record. This replica sends a worker no more
requests at once than that (`Upstream.has_room`: its own in-flight count, exact and local, so
it cannot drift or go stale while Redis is away), and never to a worker whose circuit breaker is
open (router.breaker). Among the workers with room the balancing policy picks by estimated load,
which is the worker's reported running + waiting plus this replica's changes since (so other
replicas' load does count in the choice). Several replicas can together send a worker more than
its slots; the worker's own bounded queue absorbs that, and a worker that is full answers 503,
which the relay retries on another worker.

When no worker of the model has room, the request waits in that model's FIFO queue:

- woken, not polled: every change that can free capacity (a request to the model ends, a worker
  joins or becomes ready or changes its slots, a breaker's open time runs out, a probe succeeds)
  hands free capacity straight to the first waiters that can use it (`_dispatch`), reserving the
  worker for them before they even wake, so there is no thundering herd and no lost wake-up;
- bounded: at most `queue_max` waiters per model, else 503 at once (code `queue_full`); at most
  `queue_timeout_s` of waiting per request, else 503 (code `queue_timeout`). Both carry
  `Retry-After`. 503, not 429: the service is short of capacity, which says nothing about the
  caller's own rate (429 is tenancy's rate limit); the OpenAI SDKs retry both;
- a waiter whose client hangs up (its task is cancelled) leaves the queue at once; if capacity
  had just been handed to it, that is passed on to the next waiter.

A request retried after a failure before its first byte (router.proxy) comes back with the
workers it tried, which it will not get again; it goes to the front of the queue and may exceed
`queue_max`: it was admitted once already. All of its attempts share one wait deadline.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final

from contract.errors import ServiceUnavailable
from router.breaker import BreakerSettings, BreakerState
from router.metrics import CancelPhase, QueueRejection, UpstreamError

if TYPE_CHECKING:
    from router.balancer import Policy
    from router.config import RouterConfig
    from router.metrics import RouterMetrics
    from router.upstream import Upstream
    from router.view import RegistryView

logger = logging.getLogger(__name__)

QUEUE_RETRY_AFTER_S: Final = 1.0


class Grant:
    """A reserved place on one worker: the holder must give it back with `Admission.release`."""

    __slots__ = ("done", "probe", "upstream")

    def __init__(self, upstream: Upstream, probe: bool) -> None:
        self.upstream = upstream
        self.probe = probe  # this request is the half-open breaker's probe
        self.done = False


class _Waiter:
    __slots__ = ("future", "tried")

    def __init__(self, tried: Sequence[str], future: asyncio.Future[Grant]) -> None:
        self.tried = tried
        self.future = future


class _Queue:
    __slots__ = ("length", "waiters")

    def __init__(self, length: Any) -> None:
        self.waiters: deque[_Waiter] = deque()
        self.length = length  # the model's router_queue_length child

    def remove(self, waiter: _Waiter) -> None:
        try:
            self.waiters.remove(waiter)
        except ValueError:
            return
        self.length.set(len(self.waiters))


class Admission:
    """Grants places on the workers of a model, queues the requests that find none, and is told
    how each worker did; the one owner of every upstream's load and breaker state."""

    def __init__(
        self,
        view: RegistryView,
        policy: Policy,
        metrics: RouterMetrics,
        config: RouterConfig,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._view = view
        self._policy = policy
        self._metrics = metrics
        self._queue_max = config.queue_max  # waiters per model
        self._breaker = BreakerSettings(config.breaker_failures, config.breaker_open_s)
        self._clock = clock
        self._queues: dict[str, _Queue] = {}
        self._timers: set[asyncio.TimerHandle] = set()

    # -- the request side --------------------------------------------------------------------

    def waiting(self, model: str) -> int:
        queue = self._queues.get(model)
        return len(queue.waiters) if queue is not None else 0

    async def acquire(self, model: str, tried: Sequence[str], deadline: float) -> Grant | None:
        """A worker of `model` with room that the request has not `tried`, waiting until loop
        time `deadline`.

        None when every candidate has been tried; the view's no-worker error when the model has
        no candidate at all; ServiceUnavailable when the queue is full or the deadline passes.
        """
        grant = self._try(model, tried)
        if grant is not None:
            return grant
        if all(u.worker_id in tried for u in self._view.candidates(model)):
            if not tried:
                raise self._view.no_worker(model)
            return None
        retry = bool(tried)
        queue = self._queue(model)
        if not retry and len(queue.waiters) >= self._queue_max:
            self._metrics.queue_rejections.labels(QueueRejection.FULL).inc()
            raise ServiceUnavailable(
                "Every worker for this model is busy and the queue is full; retry shortly.",
                code="queue_full",
                retry_after_s=QUEUE_RETRY_AFTER_S,
            )
        waiter = _Waiter(tried, asyncio.get_running_loop().create_future())
        if retry:
            queue.waiters.appendleft(waiter)
        else:
            queue.waiters.append(waiter)
        queue.length.set(len(queue.waiters))
        granted: Grant | None = None
        try:
            async with asyncio.timeout_at(deadline):
                granted = await waiter.future
            return granted
        except TimeoutError:
            self._metrics.queue_rejections.labels(QueueRejection.TIMEOUT).inc()
            raise ServiceUnavailable(
                "Every worker for this model stayed busy; retry shortly.",
                code="queue_timeout",
                retry_after_s=QUEUE_RETRY_AFTER_S,
            ) from None
        except asyncio.CancelledError:
            self._metrics.cancellations.labels(CancelPhase.QUEUED).inc()
            raise
        finally:
            if granted is None:  # leaving without it: timed out or cancelled
                future = waiter.future
                if future.done() and not future.cancelled():
                    # Capacity was handed over just as we gave up: pass it on.
                    self.release(future.result())
                else:
                    future.cancel()
                    queue.remove(waiter)

    def release(self, grant: Grant) -> None:
        """Give back a grant (idempotent): the worker's place goes to the next waiter."""
        if grant.done:
            return
        grant.done = True
        upstream = grant.upstream
        upstream.end()
        upstream.breaker.abandoned(grant.probe)  # a probe with no verdict frees its place
        self._dispatch(upstream.record.model)

    def succeeded(self, grant: Grant) -> None:
        """The worker answered (status < 500)."""
        upstream = grant.upstream
        if upstream.breaker.succeeded(grant.probe):
            grant.probe = False
            logger.info("worker %s answers again; taken back", upstream.worker_id)
            self._metrics.breaker_transitions.labels(upstream.worker_id, BreakerState.CLOSED).inc()
            self._dispatch(upstream.record.model)

    def refused(self, grant: Grant, kind: UpstreamError) -> None:
        """The worker gave no answer (`kind` says how), so the request may go elsewhere.

        It is tried last until its next load report; unless it was busy (503: up, but full or
        draining), that also counts against its breaker.
        """
        upstream = grant.upstream
        upstream.refused()
        if kind is UpstreamError.BUSY:
            self._metrics.upstream_errors.labels(upstream.worker_id, kind).inc()
        else:
            self.failed(grant, kind)

    def failed(self, grant: Grant, kind: UpstreamError) -> None:
        """The worker failed this request (see router.breaker for what counts)."""
        upstream = grant.upstream
        self._metrics.upstream_errors.labels(upstream.worker_id, kind).inc()
        open_s = upstream.breaker.failed(self._clock(), grant.probe, self._breaker)
        grant.probe = False
        if open_s is not None:
            logger.warning(
                "worker %s put aside for %.1fs after failures", upstream.worker_id, open_s
            )
            self._metrics.breaker_transitions.labels(upstream.worker_id, BreakerState.OPEN).inc()
            self._wake_later(upstream.record.model, open_s)

    # -- the capacity side -------------------------------------------------------------------

    def capacity_changed(self) -> None:
        """The registry view changed (a view listener): try every model that has waiters."""
        for model, queue in self._queues.items():
            if queue.waiters:
                self._dispatch(model)

    def close(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()

    def _try(self, model: str, tried: Sequence[str]) -> Grant | None:
        """Reserve the policy's pick among the workers with room, if there is one."""
        now = self._clock()
        room = [
            u
            for u in self._view.candidates(model)
            if u.has_room and u.worker_id not in tried and u.breaker.allows(now)
        ]
        if not room:
            return None
        upstream = self._policy.choose(room)
        if upstream is None:
            return None
        upstream.begin()
        return Grant(upstream, upstream.breaker.dispatched())

    def _dispatch(self, model: str) -> None:
        """Hand free capacity to the first waiters that can use it, in queue order."""
        queue = self._queues.get(model)
        if queue is None or not queue.waiters:
            return
        for waiter in list(queue.waiters):
            if waiter.future.done():
                queue.remove(waiter)
                continue
            grant = self._try(model, waiter.tried)
            if grant is None:
                if not self._any_room(model):
                    break
                continue  # this waiter has tried what is free; a later one may not have
            waiter.future.set_result(grant)
            queue.remove(waiter)

    def _any_room(self, model: str) -> bool:
        now = self._clock()
        return any(u.has_room and u.breaker.allows(now) for u in self._view.candidates(model))

    def _queue(self, model: str) -> _Queue:
        queue = self._queues.get(model)
        if queue is None:
            queue = self._queues[model] = _Queue(self._metrics.queue_length.labels(model))
        return queue

    def _wake_later(self, model: str, delay_s: float) -> None:
        """A breaker's open time ends in `delay_s`: its worker may take a probe then."""
        loop = asyncio.get_running_loop()
        timer: asyncio.TimerHandle

        def fire() -> None:
            self._timers.discard(timer)
            self._dispatch(model)

        # A hair late, so the breaker has surely moved to half-open by then.
        timer = loop.call_later(delay_s + 0.001, fire)
        self._timers.add(timer)
