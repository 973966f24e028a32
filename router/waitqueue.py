"""One model's admission queue (router.admission): its waiters, a FIFO per tenant in turn order,
and each tenant's requests running on the model's workers."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from router.admission import Grant
    from router.affinity import Affinity
    from router.balancer import CacheOutcome


class Waiter:
    """A request waiting for a place on one of the model's workers."""

    __slots__ = ("affinity", "future", "patient_until", "tenant", "tried")

    def __init__(self, tenant: str, tried: Sequence[str], future: asyncio.Future[Grant]) -> None:
        self.tenant = tenant
        self.tried = tried
        self.future = future
        self.affinity: Affinity | None = None  # cache-aware: where its prefix may be cached
        self.patient_until = 0.0  # cache-aware: it waits for its home until then (clock time)


class WaitQueue:
    """One model's waiters, a FIFO per tenant, and each tenant's requests running on it."""

    __slots__ = ("decisions", "length", "running", "tenants", "waiting")

    def __init__(self, length: Any) -> None:
        # Tenants with waiters only, in turn order (a tenant served goes to the back).
        self.tenants: dict[str, deque[Waiter]] = {}
        self.running: dict[str, int] = {}  # granted and not yet released, by tenant
        self.waiting = 0
        self.length = length  # the model's router_queue_length child
        self.decisions: dict[CacheOutcome, Any] = {}  # cache-aware: router_cache_decisions

    def add(self, waiter: Waiter, *, front: bool) -> None:
        waiters = self.tenants.get(waiter.tenant)
        if waiters is None:
            waiters = self.tenants[waiter.tenant] = deque()
        if front:
            waiters.appendleft(waiter)
        else:
            waiters.append(waiter)
        self.waiting += 1
        self.length.set(self.waiting)

    def remove(self, waiter: Waiter) -> None:
        waiters = self.tenants.get(waiter.tenant)
        if waiters is None:
            return
        try:
            waiters.remove(waiter)
        except ValueError:
            return
        if not waiters:
            del self.tenants[waiter.tenant]
        self.waiting -= 1
        self.length.set(self.waiting)

    def by_need(self) -> list[tuple[str, deque[Waiter]]]:
        """Waiting tenants, fewest running first; the sort is stable, so ties keep turn order."""
        running = self.running
        return sorted(self.tenants.items(), key=lambda item: running.get(item[0], 0))

    def served(self, tenant: str) -> None:
        """`tenant` just got capacity: it goes to the back of the turn order."""
        waiters = self.tenants.pop(tenant, None)
        if waiters:
            self.tenants[tenant] = waiters

    def victim(self, tenant: str, queue_max: int) -> Waiter | None:
        """Whom a newcomer of `tenant` to this full queue displaces: the newest waiter of the
        tenant with the most waiters if `tenant` holds less than its share, else nobody."""
        tenants = self.tenants
        mine = tenants.get(tenant)
        share = queue_max // (len(tenants) + (mine is None))
        if (len(mine) if mine else 0) >= share:
            return None
        return max(tenants.values(), key=len)[-1]
