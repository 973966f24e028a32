"""Admission under the cache-aware policy: a freed place goes to the waiter whose home it is,
no place idles while someone waits, patience is bounded, and other policies ignore affinity.
Admission driven by hand, no HTTP."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from contract.registry import Event, EventType, Snapshot
from router.admission import Admission, Grant
from router.affinity import Affinity, affinity_of
from router.balancer import CacheAware, LeastLoaded, Policy
from router.config import RouterConfig
from router.metrics import RouterMetrics
from router.view import RegistryView
from tests.waits import eventually

from .fakes import MODEL, make_record

FAR = 1e9


def conversation(name: str) -> Affinity:
    found = affinity_of([{"role": "user", "content": f"hello from {name}"}])
    assert found is not None
    return found


class Cluster:
    """Workers w0 and w1 whose records advertise the given conversations' prefixes."""

    def __init__(
        self,
        homes: dict[str, str],
        *,
        slots: int = 1,
        policy: Policy | None = None,
        wait_s: float = 30.0,
    ) -> None:
        self.affinity = {name: conversation(name) for name in homes}
        self.view = RegistryView(stale_s=30.0)
        self.view.apply_snapshot(Snapshot({}, {}), started_at=0.0)
        for i in range(2):
            held = tuple(
                a.boundaries[-1].digest for n, a in self.affinity.items() if homes[n] == f"w{i}"
            )
            record = make_record(f"w{i}", f"http://127.0.0.1:{i + 1}", slots=slots)
            self.view.apply_event(
                Event(EventType.JOIN, record.worker_id, replace(record, prefixes=held))
            )
        config = RouterConfig(redis_url="redis://127.0.0.1:1", cache_wait_s=wait_s)
        self.metrics = RouterMetrics()
        chosen = policy if policy is not None else CacheAware(imbalance=2)
        self.admission = Admission(self.view, chosen, self.metrics, config)
        self.view.add_listener(self.admission.capacity_changed)  # as router.app does
        self.grants: dict[str, Grant] = {}

    def request(self, name: str) -> asyncio.Task[Grant | None]:
        async def run() -> Grant | None:
            grant = await self.admission.acquire(MODEL, "", (), FAR, self.affinity[name])
            if grant is not None:
                self.grants[name] = grant
            return grant

        return asyncio.create_task(run())

    async def take(self, name: str) -> str:
        grant = await self.request(name)
        assert grant is not None
        return grant.upstream.worker_id

    async def queued(self, count: int) -> None:
        await eventually(lambda: self.admission.waiting(MODEL) == count)

    def decisions(self, outcome: str) -> float:
        labels = {"model": MODEL, "outcome": outcome}
        value = self.metrics.registry.get_sample_value("router_cache_decisions_total", labels)
        return 0.0 if value is None else value


async def test_a_freed_place_goes_to_the_waiter_whose_home_it_is() -> None:
    cluster = Cluster({"a": "w0", "b": "w1", "x": "w0", "y": "w1"})
    assert await cluster.take("a") == "w0"
    assert await cluster.take("b") == "w1"
    x = cluster.request("x")  # the head of the queue, at home on w0
    await cluster.queued(1)
    y = cluster.request("y")
    await cluster.queued(2)
    cluster.admission.release(cluster.grants.pop("b"))  # w1 frees: y's home, not x's
    grant = await asyncio.wait_for(y, 1)
    assert grant is not None and grant.upstream.worker_id == "w1"
    assert not x.done()
    cluster.admission.release(cluster.grants.pop("a"))
    grant = await asyncio.wait_for(x, 1)
    assert grant is not None and grant.upstream.worker_id == "w0"
    assert cluster.decisions("hit") == 4


async def test_an_arrival_whose_home_is_full_takes_a_worker_with_room() -> None:
    cluster = Cluster({"a": "w0", "x": "w0"}, slots=2)
    assert await cluster.take("a") == "w0"
    assert await cluster.take("a") == "w0"
    assert await cluster.take("x") == "w1"  # w1 would idle while x waited for w0
    assert cluster.decisions("released") == 1
    assert cluster.admission.waiting(MODEL) == 0


async def test_past_the_imbalance_a_hot_home_is_passed_over() -> None:
    cluster = Cluster({"a": "w0", "x": "w0"}, slots=4)
    for _ in range(3):
        assert await cluster.take("a") == "w0"
    assert await cluster.take("x") == "w1"  # w0 at 3, w1 at 0: past the imbalance of 2
    assert cluster.decisions("diverted") == 1


async def test_a_place_that_is_nobodys_home_goes_to_the_first_waiter() -> None:
    cluster = Cluster({"a": "w0", "b": "w1", "x": "w0"})
    assert await cluster.take("a") == "w0"
    assert await cluster.take("b") == "w1"
    x = cluster.request("x")
    await cluster.queued(1)
    cluster.admission.release(cluster.grants.pop("b"))  # w1 frees; no waiter calls it home
    grant = await asyncio.wait_for(x, 1)
    assert grant is not None and grant.upstream.worker_id == "w1"  # no place left idle
    assert cluster.decisions("released") == 1


async def test_past_its_patience_a_waiter_takes_the_first_place() -> None:
    cluster = Cluster({"a": "w0", "b": "w1", "x": "w0", "y": "w1"}, wait_s=0.0)
    assert await cluster.take("a") == "w0"
    assert await cluster.take("b") == "w1"
    x = cluster.request("x")  # first in line, home w0, but preferred there for 0 s
    await cluster.queued(1)
    y = cluster.request("y")
    await cluster.queued(2)
    cluster.admission.release(cluster.grants.pop("b"))  # w1 frees: y's home, but x is first
    grant = await asyncio.wait_for(x, 1)
    assert grant is not None and grant.upstream.worker_id == "w1"
    assert not y.done()
    y.cancel()


async def test_a_waiter_whose_home_leaves_goes_to_its_next_home() -> None:
    cluster = Cluster({"a": "w0", "b": "w1", "x": "w0"}, slots=2)
    for name in ("a", "a", "b", "b"):
        await cluster.take(name)
    x = cluster.request("x")
    await cluster.queued(1)
    cluster.view.apply_event(Event(EventType.LEAVE, "w0", None))
    cluster.admission.release(cluster.grants.pop("b"))
    grant = await asyncio.wait_for(x, 1)
    assert grant is not None and grant.upstream.worker_id == "w1"
    assert cluster.decisions("hash") == 1


async def test_other_policies_ignore_affinity() -> None:
    cluster = Cluster({"a": "w0", "b": "w1", "x": "w0", "y": "w1"}, policy=LeastLoaded())
    await cluster.take("a")
    await cluster.take("b")
    x = cluster.request("x")
    await cluster.queued(1)
    y = cluster.request("y")
    await cluster.queued(2)
    freed = cluster.grants.pop("b")
    cluster.admission.release(freed)  # w1 frees: the head waiter takes it, whatever its home
    grant = await asyncio.wait_for(x, 1)
    assert grant is not None and grant.upstream is freed.upstream
    assert not y.done()
    y.cancel()
    assert (
        cluster.metrics.registry.get_sample_value(
            "router_cache_decisions_total", {"model": MODEL, "outcome": "hit"}
        )
        is None
    )
