"""One model's wait queue (router.waitqueue): turn order, need order, whom a newcomer displaces."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry, Gauge

from router.admission import Grant
from router.waitqueue import Waiter, WaitQueue


def queue() -> WaitQueue:
    gauge = Gauge("length", "queue length", registry=CollectorRegistry())
    return WaitQueue(gauge)


async def waiter(tenant: str) -> Waiter:
    future: asyncio.Future[Grant] = asyncio.get_running_loop().create_future()
    return Waiter(tenant, (), future)


async def test_tenants_wait_in_turn_and_by_need() -> None:
    q = queue()
    a1, b1, a2 = await waiter("a"), await waiter("b"), await waiter("a")
    for w in (a1, b1, a2):
        q.add(w, front=False)
    assert q.waiting == 3 and q.length._value.get() == 3
    assert [t for t, _ in q.by_need()] == ["a", "b"]
    q.running["a"] = 2  # a has more running: b first
    assert [t for t, _ in q.by_need()] == ["b", "a"]
    q.running.clear()
    q.served("a")  # a goes to the back of the turn order
    assert [t for t, _ in q.by_need()] == ["b", "a"]
    q.remove(b1)
    q.remove(b1)  # twice: no harm
    assert q.waiting == 2 and "b" not in q.tenants
    retry = await waiter("a")
    q.add(retry, front=True)
    assert q.tenants["a"][0] is retry


async def test_a_newcomer_under_its_share_displaces_the_biggest_tenants_newest() -> None:
    q = queue()
    flood = [await waiter("a") for _ in range(4)]
    for w in flood:
        q.add(w, front=False)
    assert q.victim("b", queue_max=4) is flood[-1]  # b's share is 2, it holds none
    assert q.victim("a", queue_max=4) is None  # a holds more than its share
    assert (await waiter("x")).affinity is None  # no affinity unless cache-aware sets one
