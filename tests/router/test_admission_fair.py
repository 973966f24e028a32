"""The admission queue's fairness between tenants: Admission driven by hand, no HTTP.

A view fed by hand holds workers with few slots; requests are `acquire` calls, each in a task,
so a test can see which waiters get the places that `release` frees, in what order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from contract.errors import ServiceUnavailable
from contract.registry import Event, EventType, Snapshot
from router.admission import Admission, Grant
from router.balancer import LeastLoaded
from router.config import RouterConfig
from router.metrics import RouterMetrics
from router.view import RegistryView
from tests.waits import eventually

from .fakes import MODEL, make_record

FAR = 1e9  # a deadline that never comes


class Queue:
    """An Admission in front of workers that never answer: grants are held until released."""

    def __init__(self, *, slots: int = 1, workers: int = 1, queue_max: int = 256) -> None:
        config = RouterConfig(redis_url="redis://127.0.0.1:1", queue_max=queue_max)
        self.view = RegistryView(stale_s=30.0)
        self.view.apply_snapshot(Snapshot({}, {}), started_at=0.0)
        for i in range(workers):
            record = make_record(f"w{i}", f"http://127.0.0.1:{i + 1}", slots=slots)
            self.view.apply_event(Event(EventType.JOIN, record.worker_id, record))
        self.metrics = RouterMetrics()
        self.admission = Admission(self.view, LeastLoaded(), self.metrics, config)
        self.order: list[str] = []  # names of the waiters, in the order they got a place
        self.grants: dict[str, Grant] = {}

    async def take(self, tenant: str, name: str) -> Grant:
        """A place at once (there must be room)."""
        grant = await self.admission.acquire(MODEL, tenant, (), FAR)
        assert grant is not None
        self.grants[name] = grant
        return grant

    def wait(
        self, tenant: str, name: str, *, tried: Sequence[str] = (), deadline: float = FAR
    ) -> asyncio.Task[Grant | None]:
        """A request that queues; when it gets a place it is noted in `order`."""

        async def run() -> Grant | None:
            grant = await self.admission.acquire(MODEL, tenant, tried, deadline)
            if grant is not None:
                self.order.append(name)
                self.grants[name] = grant
            return grant

        return asyncio.create_task(run())

    async def queued(self, count: int) -> None:
        await eventually(lambda: self.admission.waiting(MODEL) == count)

    async def release(self, name: str) -> None:
        """Give `name`'s place back and let the waiter it goes to run."""
        self.admission.release(self.grants.pop(name))
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    def full_rejections(self) -> float:
        value = self.metrics.registry.get_sample_value(
            "router_queue_rejections_total", {"reason": "full"}
        )
        return 0.0 if value is None else value


async def test_freed_places_go_to_the_tenant_with_fewest_running() -> None:
    q = Queue(slots=2)
    await q.take("A", "x1")
    await q.take("A", "x2")
    for name in ("a1", "a2", "a3"):
        q.wait("A", name)
    await q.queued(3)
    tasks = [q.wait("B", name) for name in ("b1", "b2")]
    await q.queued(5)
    assert q.admission.waiting(MODEL, "A") == 3
    assert q.admission.waiting(MODEL, "B") == 2
    await q.release("x1")  # A runs 1, B 0
    await q.release("x2")  # A 0, B 1
    await q.release("b1")  # A 1, B 0
    await q.release("a1")  # A 0, B 1
    assert q.order == ["b1", "a1", "b2", "a2"]  # plain FIFO would give a1, a2, a3, b1
    assert q.admission.waiting(MODEL) == 1
    await asyncio.gather(*tasks)


async def test_equally_served_tenants_take_turns() -> None:
    q = Queue(slots=1)
    await q.take("X", "x")
    for tenant in "ABC":
        q.wait(tenant, tenant.lower() + "1")
        q.wait(tenant, tenant.lower() + "2")
    await q.queued(6)
    await q.release("x")
    for _ in range(5):
        await q.release(q.order[-1])
    assert q.order == ["a1", "b1", "c1", "a2", "b2", "c2"]
    assert q.admission.waiting(MODEL) == 0


async def test_a_full_queue_is_shared_between_the_tenants_waiting() -> None:
    q = Queue(slots=1, queue_max=4)
    await q.take("A", "x")
    flood = [q.wait("A", f"a{i}") for i in range(1, 6)]
    await eventually(lambda: flood[4].done())  # the fifth is refused: A alone fills the queue
    with pytest.raises(ServiceUnavailable) as refused:
        await flood[4]
    assert refused.value.code == "queue_full"
    # B is owed half the queue: its newcomers displace A's newest waiters, then B is refused.
    b = [q.wait("B", f"b{i}") for i in range(1, 4)]
    await eventually(lambda: b[2].done())
    assert [t.done() for t in flood[:4]] == [False, False, True, True]
    for task in (*flood[2:4], b[2]):
        with pytest.raises(ServiceUnavailable) as displaced:
            await task
        assert displaced.value.code == "queue_full"
    assert q.admission.waiting(MODEL, "A") == q.admission.waiting(MODEL, "B") == 2
    assert q.full_rejections() == 4
    # A third tenant is owed 4 // 3 = 1: it displaces the newest of the longest sub-queue.
    c = q.wait("C", "c1")
    await eventually(lambda: flood[1].done())
    with pytest.raises(ServiceUnavailable):
        await flood[1]
    assert [q.admission.waiting(MODEL, t) for t in "ABC"] == [1, 2, 1]
    await q.release("x")
    for _ in range(3):
        await q.release(q.order[-1])
    assert sorted(q.order) == ["a1", "b1", "b2", "c1"]
    await asyncio.gather(c, *b[:2], flood[0])


async def test_an_empty_queue_refuses_everyone() -> None:
    q = Queue(slots=1, queue_max=0)
    await q.take("A", "x")
    with pytest.raises(ServiceUnavailable):
        await q.admission.acquire(MODEL, "B", (), FAR)
    assert q.admission.waiting(MODEL) == 0


async def test_a_retry_goes_first_within_its_tenant_only() -> None:
    q = Queue(slots=1, workers=2)
    await q.take("A", "x1")
    await q.take("A", "x2")
    q.wait("A", "a1")
    q.wait("B", "b1")
    await q.queued(2)
    q.wait("A", "retry", tried=("gone",))  # tried a worker that has since left
    await q.queued(3)
    await q.release("x1")  # A runs 1, B 0: B's turn, retry or not
    await q.release("x2")  # A 0, B 1: A's, and its retry first
    await q.release("b1")
    assert q.order == ["b1", "retry", "a1"]


async def test_a_retry_may_exceed_the_queue_bound() -> None:
    q = Queue(slots=1, workers=2, queue_max=1)
    await q.take("A", "x1")
    await q.take("A", "x2")
    q.wait("A", "a1")
    await q.queued(1)
    q.wait("A", "retry", tried=("gone",))
    await q.queued(2)
    assert q.full_rejections() == 0


async def test_a_waiter_that_leaves_is_gone_at_once_and_its_turn_passes() -> None:
    q = Queue(slots=1)
    await q.take("A", "x")
    leaving = q.wait("B", "b1")
    q.wait("A", "a1")
    await q.queued(2)
    leaving.cancel()
    await q.queued(1)
    assert q.admission.waiting(MODEL, "B") == 0
    await q.release("x")
    assert q.order == ["a1"]
    cancelled = q.metrics.registry.get_sample_value(
        "router_cancellations_total", {"phase": "queued"}
    )
    assert cancelled == 1


async def test_a_waiter_past_its_deadline_leaves_with_503() -> None:
    q = Queue(slots=1)
    await q.take("A", "x")
    soon = asyncio.get_running_loop().time() + 0.05
    late = q.wait("B", "b1", deadline=soon)
    with pytest.raises(ServiceUnavailable) as timed_out:
        await late
    assert timed_out.value.code == "queue_timeout"
    assert q.admission.waiting(MODEL) == 0
    await q.release("x")
    assert q.order == []


async def test_running_counts_follow_grants_and_releases() -> None:
    """A tenant's running count falls when its requests end: after A's two end, A is as
    under-served as B again, and ties go in turn."""
    q = Queue(slots=2)
    await q.take("A", "x1")
    await q.take("A", "x2")
    q.admission.release(q.grants.pop("x1"))
    q.admission.release(q.grants.pop("x2"))
    await q.take("B", "y1")
    await q.take("B", "y2")
    q.wait("A", "a1")
    q.wait("B", "b1")
    await q.queued(2)
    await q.release("y1")  # A 0, B 1
    assert q.order == ["a1"]
