"""The slot queue: slots, a bounded FIFO wait, refusal, hand-over, drain and exact counters."""

from __future__ import annotations

import asyncio

import pytest

from contract.errors import ServiceUnavailable
from worker.slots import SlotQueue


async def hold(queue: SlotQueue, release: asyncio.Event, order: list[int], n: int) -> None:
    async with queue.slot():
        order.append(n)
        await release.wait()


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_rejects_nonsense_sizes() -> None:
    with pytest.raises(ValueError, match="slots"):
        SlotQueue(0, 1)
    with pytest.raises(ValueError, match="max_queue"):
        SlotQueue(1, -1)


async def test_slots_then_a_bounded_fifo_line_then_503() -> None:
    queue = SlotQueue(slots=2, max_queue=2)
    release = asyncio.Event()
    order: list[int] = []
    tasks = [asyncio.create_task(hold(queue, release, order, n)) for n in range(4)]
    await settle()
    assert (queue.running, queue.waiting) == (2, 2)
    assert order == [0, 1]

    with pytest.raises(ServiceUnavailable, match="at capacity") as refused:
        async with queue.slot():
            pass
    assert refused.value.headers() == {"Retry-After": "1"}
    assert (queue.running, queue.waiting) == (2, 2)

    release.set()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3]  # the waiters in arrival order
    assert (queue.running, queue.waiting) == (0, 0)


async def test_a_freed_slot_goes_straight_to_the_first_waiter() -> None:
    queue = SlotQueue(slots=1, max_queue=1)
    first, second = asyncio.Event(), asyncio.Event()
    order: list[int] = []
    running = asyncio.create_task(hold(queue, first, order, 0))
    waiting = asyncio.create_task(hold(queue, second, order, 1))
    await settle()
    seen: list[int] = []

    async def watch() -> None:
        while not waiting.done():
            seen.append(queue.running)
            await asyncio.sleep(0)

    watcher = asyncio.create_task(watch())
    first.set()
    await running
    await settle()
    assert order == [0, 1]
    second.set()
    await waiting
    await watcher
    assert 0 not in seen  # running never dipped between the two holders


async def test_a_waiter_that_leaves_gives_its_place_back() -> None:
    queue = SlotQueue(slots=1, max_queue=1)
    release = asyncio.Event()
    order: list[int] = []
    running = asyncio.create_task(hold(queue, release, order, 0))
    waiter = asyncio.create_task(hold(queue, release, order, 1))
    await settle()
    assert queue.waiting == 1
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert (queue.running, queue.waiting) == (1, 0)
    release.set()
    await running
    assert (queue.running, queue.waiting) == (0, 0)
    assert order == [0]


async def test_draining_refuses_new_work_and_waits_for_the_rest() -> None:
    queue = SlotQueue(slots=1, max_queue=4)
    release = asyncio.Event()
    order: list[int] = []
    running = asyncio.create_task(hold(queue, release, order, 0))
    await settle()
    queue.load_changed.clear()
    queue.start_draining()
    assert queue.draining
    assert queue.load_changed.is_set()
    with pytest.raises(ServiceUnavailable, match="shutting down"):
        async with queue.slot():
            pass
    assert not await queue.wait_idle(0.01)
    release.set()
    assert await queue.wait_idle(1.0)
    await running


async def test_every_change_of_load_is_signalled() -> None:
    queue = SlotQueue(slots=1, max_queue=0)
    assert await queue.wait_idle(0.0)
    queue.load_changed.clear()
    async with queue.slot():
        assert queue.load_changed.is_set()
        queue.load_changed.clear()
    assert queue.load_changed.is_set()
    assert queue.running == 0
