"""The balancing policy: least-loaded, random among ties, counters that never drift."""

from __future__ import annotations

import random
from collections import Counter

from router.balancer import LeastLoaded, Policy, WorkerLoad


def loads(*reported: int) -> list[WorkerLoad]:
    return [WorkerLoad(f"w{i}", n) for i, n in enumerate(reported)]


def test_least_loaded_picks_the_minimum() -> None:
    workers = loads(5, 2, 7)
    assert LeastLoaded(random.Random(1)).choose(workers) is workers[1]


def test_local_starts_count_until_the_next_report() -> None:
    workers = loads(0, 1)
    policy = LeastLoaded(random.Random(1))
    workers[0].begin()
    workers[0].begin()  # now 2 > 1
    assert policy.choose(workers) is workers[1]
    workers[0].report(0)  # a fresh heartbeat replaces the local estimate
    assert workers[0].load == 0
    assert workers[0].in_flight == 2  # the true local count is unaffected
    assert policy.choose(workers) is workers[0]


def test_finishing_a_reported_request_lowers_the_load() -> None:
    worker = WorkerLoad("w", 3)
    worker.end()  # started before the report, finished after it
    assert worker.load == 2


def test_ties_are_broken_at_random_and_reproducibly() -> None:
    workers = loads(1, 0, 0, 0)

    def picks(seed: int) -> list[str]:
        policy = LeastLoaded(random.Random(seed))
        out = []
        for _ in range(300):
            choice = policy.choose(workers)
            assert choice is not None
            out.append(choice.worker_id)
        return out

    counts = Counter(picks(7))
    assert set(counts) == {"w1", "w2", "w3"}
    assert all(60 < n < 140 for n in counts.values())  # about 100 each
    assert picks(7) == picks(7)


def test_exclude_skips_tried_workers() -> None:
    workers = loads(0, 5)
    policy: Policy = LeastLoaded(random.Random(1))
    assert policy.choose(workers, ["w0"]) is workers[1]
    assert policy.choose(workers, ["w0", "w1"]) is None
    assert policy.choose([]) is None


def test_counters_never_go_negative() -> None:
    worker = WorkerLoad("w", -3)
    assert worker.load == 0
    worker.end()
    worker.end()
    assert worker.in_flight == 0
    assert worker.load == 0
    worker.begin()
    assert worker.in_flight == 1
    assert worker.load == 0  # one start against two finishes still clamps at zero
    worker.report(-1)
    assert worker.load == 0
    worker.end()
    worker.end()
    assert worker.in_flight == 0


def test_a_refusing_worker_is_tried_last_until_it_reports() -> None:
    workers = loads(0, 3)
    policy = LeastLoaded(random.Random(1))
    workers[0].refused()
    assert policy.choose(workers) is workers[1]
    workers[0].report(0)
    assert policy.choose(workers) is workers[0]
