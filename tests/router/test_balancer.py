"""The balancing policies (least-loaded, round-robin, random): pure, on plain candidates."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

import pytest

from router.balancer import CacheAware, LeastLoaded, PolicyName, RoundRobin, Uniform, make_policy


@dataclass(frozen=True)
class Worker:
    """A candidate as a policy sees it: an id for the assertions, and a load."""

    worker_id: str
    load: int


def loads(*reported: int) -> list[Worker]:
    return [Worker(f"w{i}", n) for i, n in enumerate(reported)]


def test_least_loaded_picks_the_minimum() -> None:
    workers = loads(5, 2, 7)
    assert LeastLoaded(random.Random(1)).choose(workers) is workers[1]


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


def test_an_empty_choice_is_none() -> None:
    for policy in (LeastLoaded(random.Random(1)), RoundRobin(), Uniform(random.Random(1))):
        assert policy.choose([]) is None


def test_round_robin_takes_turns_whatever_the_load() -> None:
    workers = loads(9, 0, 5)
    policy = RoundRobin()
    picks = [policy.choose(workers) for _ in range(6)]
    assert [p.worker_id for p in picks if p] == ["w0", "w1", "w2", "w0", "w1", "w2"]
    assert policy.choose(workers) is workers[0]
    # Fewer candidates now (one left the view): the turns go on among those left.
    assert [policy.choose(workers[:2]) for _ in range(2)] == [workers[1], workers[0]]


def test_random_ignores_load_and_covers_everyone() -> None:
    workers = loads(100, 0, 0)
    policy = Uniform(random.Random(3))
    counts = Counter(p.worker_id for p in (policy.choose(workers) for _ in range(300)) if p)
    assert set(counts) == {"w0", "w1", "w2"}
    assert all(60 < n < 140 for n in counts.values())
    assert policy.choose(workers[2:]) is workers[2]


def test_make_policy_names() -> None:
    assert isinstance(make_policy(PolicyName("least-loaded")), LeastLoaded)
    assert isinstance(make_policy(PolicyName("round-robin")), RoundRobin)
    assert isinstance(make_policy(PolicyName("random")), Uniform)
    assert isinstance(make_policy(PolicyName("cache-aware")), CacheAware)
    assert list(PolicyName) == ["least-loaded", "round-robin", "random", "cache-aware"]
    with pytest.raises(ValueError, match="is not a valid PolicyName"):
        PolicyName("fastest")
