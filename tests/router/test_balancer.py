"""The balancing policies (least-loaded, round-robin, random) and counters that never drift."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from router.balancer import (
    LeastLoaded,
    Policy,
    PolicyName,
    RoundRobin,
    Uniform,
    WorkerLoad,
    make_policy,
)


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


def test_round_robin_takes_turns_and_skips_the_excluded() -> None:
    workers = loads(9, 0, 5)
    policy = RoundRobin()
    picks = [policy.choose(workers) for _ in range(6)]
    assert [p.worker_id for p in picks if p] == ["w0", "w1", "w2", "w0", "w1", "w2"]
    assert policy.choose(workers, ["w0"]) is workers[1]
    assert policy.choose(workers, ["w0", "w1", "w2"]) is None
    assert policy.choose([]) is None


def test_random_ignores_load_and_covers_everyone() -> None:
    workers = loads(100, 0, 0)
    policy = Uniform(random.Random(3))
    counts = Counter(p.worker_id for p in (policy.choose(workers) for _ in range(300)) if p)
    assert set(counts) == {"w0", "w1", "w2"}
    assert all(60 < n < 140 for n in counts.values())
    assert policy.choose(workers, ["w0", "w1"]) is workers[2]


def test_make_policy_names() -> None:
    assert isinstance(make_policy(PolicyName("least-loaded")), LeastLoaded)
    assert isinstance(make_policy(PolicyName("round-robin")), RoundRobin)
    assert isinstance(make_policy(PolicyName("random")), Uniform)
    assert list(PolicyName) == ["least-loaded", "round-robin", "random"]
    with pytest.raises(ValueError, match="is not a valid PolicyName"):
        PolicyName("fastest")


def test_room_is_this_replicas_in_flight_below_the_slots() -> None:
    worker = WorkerLoad("w", reported=10, slots=2)
    assert worker.has_room  # others' load counts in the choice, not in admission
    worker.begin()
    assert worker.has_room
    worker.begin()
    assert not worker.has_room
    worker.end()
    assert worker.has_room
    assert WorkerLoad("w", slots=0).slots == 1
