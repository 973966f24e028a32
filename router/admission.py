"""Admission: at most `slots` of this replica's requests on a worker, the rest in a bounded queue.

Admission is the one place that changes an upstream's load and breaker state (router.upstream):
a request begins on a worker when it is granted a place (`acquire`), ends when it gives the place
back (`release`), and the relay reports in between how the worker did (`succeeded`, `refused`
before any answer, `failed` mid-answer, `slow` past a time bound).

A worker advertises its slots in its registry record. This replica sends a worker no more
requests at once than that (`Upstream.has_room`: its own in-flight count, exact and local, so
it cannot drift or go stale while Redis is away), and never to a worker whose circuit breaker is
open (router.breaker). Among the workers with room the balancing policy picks by estimated load,
which is the worker's reported running + waiting plus this replica's changes since (so other
replicas' load does count in the choice). Several replicas can together send a worker more than
its slots; the worker's own bounded queue absorbs that, and a worker that is full answers 503,
which the relay retries on another worker.

When no worker of the model has room, the request waits in that model's queue, which serves
tenants (projects; "" when auth is off) in turn, so a flood from one tenant delays only that
tenant:

- fair: each tenant has its own FIFO sub-queue. Capacity that frees goes to the waiting tenant
  with the fewest requests running on the model's workers through this replica; among equals,
  in turn (round-robin). Two saturating tenants thus get half the slots each, and a light
  tenant's requests start as soon as any slot frees. Each replica is fair over its own slots;
- woken, not polled: every change that can free capacity (a request to the model ends, a worker
  joins or becomes ready or changes its slots, a breaker's open time runs out, a probe succeeds)
  hands free capacity straight to the waiters that can use it (`_dispatch`), reserving the
  worker for them before they even wake, so there is no thundering herd and no lost wake-up;
- bounded: at most `queue_max` waiters per model and `queue_timeout_s` of waiting per request,
  else 503 (codes `queue_full`, `queue_timeout`) with `Retry-After`. 503, not 429: the service
  is short of capacity, which says nothing about the caller's own rate (429 is tenancy's rate
  limit); the OpenAI SDKs retry both. The bound is shared fairly too: with n tenants waiting
  (the newcomer's counted), each is owed queue_max // n places. A newcomer to a full queue whose
  tenant holds fewer than that takes the place of the newest waiter of the tenant with the most
  waiters, which is answered 503 `queue_full`; otherwise the newcomer is. So one tenant's flood
  can fill the queue only while nobody else waits;
- a waiter whose client hangs up (its task is cancelled) leaves the queue at once; if capacity
  had just been handed to it, that is passed on to the next waiter.

Under the cache-aware policy (router.balancer.CacheAware) a chat request has a home, the worker
likely to hold its prompt's prefix, and capacity goes where it keeps caches warm:

- a request goes to its home if that has room; else to the least-loaded worker with room (no
  capacity idles while a request waits), else it waits;
- a place that frees on a worker goes first to the first waiter, in the tenant order above,
  whose home it is; only if nobody's is does it go to the first waiter that can use it. So
  under saturation each worker serves its own conversations, and capacity is never left idle;
- patience is bounded: after `cache_wait_s` a waiter counts as at home anywhere, and a home
  that leaves or whose breaker is open is no home (the next by hashing is).

A request retried after a failure before its first byte (router.proxy) comes back with the
workers it tried, which it will not get again; it goes to the front of its tenant's sub-queue
and may exceed `queue_max`: it was admitted once already. All of its attempts share one wait
deadline.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Final

from contract.errors import ServiceUnavailable
from router.balancer import CacheAware, CacheOutcome
from router.breaker import BreakerSettings, BreakerState
from router.metrics import CancelPhase, QueueRejection, UpstreamError
from router.waitqueue import Waiter, WaitQueue

if TYPE_CHECKING:
    from router.affinity import Affinity
    from router.balancer import Policy
    from router.config import RouterConfig
    from router.metrics import RouterMetrics
    from router.upstream import Upstream
    from router.view import RegistryView

logger = logging.getLogger(__name__)

QUEUE_RETRY_AFTER_S: Final = 1.0


class Grant:
    """A reserved place on one worker: the holder must give it back with `Admission.release`."""

    __slots__ = ("done", "probe", "queue", "tenant", "upstream")

    def __init__(self, upstream: Upstream, probe: bool, queue: WaitQueue, tenant: str) -> None:
        self.upstream = upstream
        self.probe = probe  # this request is the half-open breaker's probe
        self.queue = queue  # its model's queue, which counts the tenant's running requests
        self.tenant = tenant
        self.done = False


def _queue_full() -> ServiceUnavailable:
    return ServiceUnavailable(
        "Every worker for this model is busy and the queue is full; retry shortly.",
        code="queue_full",
        retry_after_s=QUEUE_RETRY_AFTER_S,
    )


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
        self._affine = policy if isinstance(policy, CacheAware) else None
        self._home_wait_s = config.cache_wait_s
        self._breaker = BreakerSettings(config.breaker_failures, config.breaker_open_s)
        self._clock = clock
        self._queues: dict[str, WaitQueue] = {}
        self._timers: set[asyncio.TimerHandle] = set()

    # -- the request side --------------------------------------------------------------------

    def waiting(self, model: str, tenant: str | None = None) -> int:
        """Requests waiting for `model` (only `tenant`'s, if given)."""
        queue = self._queues.get(model)
        if queue is None:
            return 0
        if tenant is None:
            return queue.waiting
        return len(queue.tenants.get(tenant, ()))

    async def acquire(
        self,
        model: str,
        tenant: str,
        tried: Sequence[str],
        deadline: float,
        affinity: Affinity | None = None,
    ) -> Grant | None:
        """A worker of `model` with room that the request of `tenant` has not `tried`, waiting
        until loop time `deadline`; `affinity` is what the cache-aware policy reads.

        None when every candidate has been tried; the view's no-worker error when the model has
        no candidate at all; ServiceUnavailable when the queue is full or the deadline passes.
        """
        queue = self._queues.get(model)
        if queue is None:
            queue = self._queues[model] = self._new_queue(model)
        if self._affine is None:
            affinity = None  # only the cache-aware policy reads it
        grant = self._try(queue, model, tenant, tried, affinity)
        if grant is not None:
            return grant
        if all(u.worker_id in tried for u in self._view.candidates(model)):
            if not tried:
                raise self._view.no_worker(model)
            return None
        retry = bool(tried)
        if not retry and queue.waiting >= self._queue_max:
            self._make_room(queue, tenant)
        waiter = Waiter(tenant, tried, asyncio.get_running_loop().create_future())
        if affinity is not None:
            self._wait_for_home(waiter, model, affinity)
        queue.add(waiter, front=retry)
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
            if granted is None:  # leaving without it: timed out, cancelled or displaced
                future = waiter.future
                if future.done() and not future.cancelled() and future.exception() is None:
                    # Capacity was handed over just as we gave up: pass it on.
                    self.release(future.result())
                else:
                    future.cancel()
                    queue.remove(waiter)

    def _wait_for_home(self, waiter: Waiter, model: str, affinity: Affinity) -> None:
        """Cache-aware: `waiter` is preferred by its home only until `cache_wait_s` from now."""
        waiter.affinity = affinity
        waiter.patient_until = self._clock() + self._home_wait_s

    def _make_room(self, queue: WaitQueue, tenant: str) -> None:
        """The queue is full: displace another tenant's newest waiter for `tenant`'s newcomer
        if `tenant` is under its share (see above), else refuse the newcomer."""
        self._metrics.queue_rejections.labels(QueueRejection.FULL).inc()
        victim = queue.victim(tenant, self._queue_max)
        if victim is None:
            raise _queue_full()
        queue.remove(victim)
        if not victim.future.done():  # else it is leaving already
            victim.future.set_exception(_queue_full())

    def release(self, grant: Grant) -> None:
        """Give back a grant (idempotent): the worker's place goes to the next waiter."""
        if grant.done:
            return
        grant.done = True
        upstream = grant.upstream
        upstream.end()
        running, tenant = grant.queue.running, grant.tenant
        left = running.get(tenant, 0) - 1
        if left > 0:
            running[tenant] = left
        else:
            running.pop(tenant, None)  # only tenants with requests running are kept
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

    def slow(self, grant: Grant) -> None:
        """The worker had the request and was still at it when its time ran out: counted as a
        timeout, but neither against its breaker nor its load (router.proxy says why)."""
        worker = grant.upstream.worker_id
        self._metrics.upstream_errors.labels(worker, UpstreamError.TIMEOUT).inc()

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
            if queue.waiting:
                self._dispatch(model)

    def close(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()

    def _new_queue(self, model: str) -> WaitQueue:
        queue = WaitQueue(self._metrics.queue_length.labels(model))
        if self._affine is not None:
            family = self._metrics.cache_decisions
            queue.decisions = {o: family.labels(model, o) for o in CacheOutcome}
        return queue

    def _try(
        self,
        queue: WaitQueue,
        model: str,
        tenant: str,
        tried: Sequence[str],
        affinity: Affinity | None = None,
        patient: bool = False,
    ) -> Grant | None:
        """Reserve the policy's pick among the workers with room, if there is one."""
        if self._affine is not None:
            return self._try_affine(self._affine, queue, model, tenant, tried, affinity, patient)
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
        return self._grant(queue, upstream, tenant)

    def _try_affine(
        self,
        policy: CacheAware,
        queue: WaitQueue,
        model: str,
        tenant: str,
        tried: Sequence[str],
        affinity: Affinity | None,
        patient: bool,
    ) -> Grant | None:
        """As _try, for the cache-aware policy: its home among every worker that could take
        the request (room or not), and None while it should wait for it (`patient`)."""
        now = self._clock()
        usable: list[Upstream] = []
        room: list[Upstream] = []
        for u in self._view.candidates(model):
            if u.worker_id not in tried and u.breaker.allows(now):
                usable.append(u)
                if u.has_room:
                    room.append(u)
        if not room:
            return None
        decision = policy.decide(usable, room, affinity, patient=patient)
        if decision is None:
            return None
        upstream, outcome = decision
        queue.decisions[outcome].inc()
        return self._grant(queue, upstream, tenant)

    def _grant(self, queue: WaitQueue, upstream: Upstream, tenant: str) -> Grant:
        upstream.begin()
        running = queue.running
        running[tenant] = running.get(tenant, 0) + 1
        return Grant(upstream, upstream.breaker.dispatched(), queue, tenant)

    def _dispatch(self, model: str) -> None:
        """Hand free capacity to waiters, one place at a time, the most under-served first."""
        queue = self._queues.get(model)
        if queue is None:
            return
        while queue.waiting and self._hand_over(queue, model):
            pass

    def _hand_over(self, queue: WaitQueue, model: str) -> bool:
        """Give one free place to the first waiter, in tenant need then queue order, that can
        use it; False when none can. Cache-aware: a first pass only gives a place to a waiter
        whose home it is (see above)."""
        if self._affine is not None and self._hand_over_pass(queue, model, at_home=True):
            return True
        return self._hand_over_pass(queue, model, at_home=False)

    def _hand_over_pass(self, queue: WaitQueue, model: str, *, at_home: bool) -> bool:
        now = self._clock()
        for tenant, waiters in queue.by_need():
            for waiter in waiters:
                if waiter.future.done():
                    continue  # cancelled; its own task removes it
                affinity = waiter.affinity
                patient = at_home and affinity is not None and now < waiter.patient_until
                grant = self._try(queue, model, tenant, waiter.tried, affinity, patient)
                if grant is not None:
                    queue.remove(waiter)
                    queue.served(tenant)
                    waiter.future.set_result(grant)
                    return True
                if (not waiter.tried and affinity is None) or not self._any_room(model):
                    return False  # no room at all
                # This waiter has tried what is free, or waits for its home; another may not.
        return False

    def _any_room(self, model: str) -> bool:
        now = self._clock()
        return any(u.has_room and u.breaker.allows(now) for u in self._view.candidates(model))

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
