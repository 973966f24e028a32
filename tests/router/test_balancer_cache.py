"""The cache-aware policy (router.balancer.CacheAware), pure: homes, hashing, the imbalance."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import pytest

from router.affinity import Affinity, affinity_of
from router.balancer import DEFAULT_IMBALANCE, CacheAware, CacheOutcome, PolicyName, weight
from router.config import RouterConfig

SYSTEM = {"role": "system", "content": "You answer questions about the attached document. " * 20}


@dataclass(eq=False)
class Worker:
    worker_id: str
    load: int = 0
    prefixes: frozenset[str] = frozenset()


def conversation(n: int, turns: int = 1) -> list[dict[str, str]]:
    messages = [SYSTEM, {"role": "user", "content": f"question {n}"}]
    for turn in range(1, turns):
        messages += [
            {"role": "assistant", "content": f"answer {n}.{turn}"},
            {"role": "user", "content": f"follow-up {n}.{turn}"},
        ]
    return messages


def affinity(n: int, turns: int = 1) -> Affinity:
    found = affinity_of(conversation(n, turns))
    assert found is not None
    return found


def test_two_replicas_agree_on_every_conversations_home() -> None:
    workers = [Worker(f"worker-{i}") for i in range(3)]
    replicas = [CacheAware(rng=random.Random(1)), CacheAware(rng=random.Random(2))]
    homes = []
    for n in range(200):
        picks = [r.decide(workers, workers, affinity(n), patient=True) for r in replicas]
        assert picks[0] == picks[1]
        assert picks[0] is not None and picks[0][1] is CacheOutcome.HASH
        homes.append(picks[0][0].worker_id)
    # Every worker is the home of some conversations: hashing spreads them.
    assert {w: homes.count(w) for w in set(homes)}.keys() == {w.worker_id for w in workers}
    assert min(homes.count(w.worker_id) for w in workers) > 40


def test_every_turn_of_a_conversation_has_the_same_home() -> None:
    workers = [Worker(f"w{i}") for i in range(4)]
    policy = CacheAware()
    for n in range(20):
        homes = {policy.home(workers, affinity(n, turns))[0] for turns in (1, 2, 5)}  # type: ignore[index]
        assert len(homes) == 1


def test_a_worker_that_leaves_moves_only_its_own_conversations() -> None:
    workers = [Worker(f"w{i}") for i in range(4)]
    policy = CacheAware()
    before = {n: policy.home(workers, affinity(n)) for n in range(100)}
    after = {n: policy.home(workers[1:], affinity(n)) for n in range(100)}
    for n in range(100):
        old, new = before[n], after[n]
        assert old is not None and new is not None
        if old[0] is not workers[0]:
            assert new[0] is old[0]


def test_the_deepest_advertised_prefix_wins_over_hashing() -> None:
    request = affinity(7, turns=3)
    system, first_turn = request.boundaries[0].digest, request.boundaries[2].digest
    a, b = Worker("a", prefixes=frozenset({system})), Worker("b", prefixes=frozenset({system}))
    policy = CacheAware()
    # Both hold the shared system prompt only: a tie, which hashing breaks as on every replica.
    tie = policy.decide([a, b], [a, b], request, patient=True)
    assert tie is not None and tie[1] is CacheOutcome.HIT
    expected = max((a, b), key=lambda w: weight(request.key, w.worker_id))
    assert tie[0] is expected
    other = b if expected is a else a
    other.prefixes = frozenset({system, first_turn})
    assert policy.decide([a, b], [a, b], request, patient=True) == (other, CacheOutcome.HIT)


def test_the_imbalance_bound_sends_a_hot_home_to_the_least_loaded() -> None:
    request = affinity(3)
    a, b = Worker("a"), Worker("b")
    home = CacheAware().home([a, b], request)
    assert home is not None
    hot, cold = (a, b) if home[0] is a else (b, a)
    policy = CacheAware(imbalance=2)
    hot.load, cold.load = 2, 0  # at the bound: still home
    assert policy.decide([a, b], [a, b], request, patient=True) == (hot, CacheOutcome.HASH)
    hot.load = 3  # past it
    assert policy.decide([a, b], [a, b], request, patient=True) == (cold, CacheOutcome.DIVERTED)
    assert CacheAware(imbalance=3).decide([a, b], [a, b], request, patient=True) == (
        hot,
        CacheOutcome.HASH,
    )


def test_a_full_home_is_waited_for_only_while_patient() -> None:
    request = affinity(5)
    a, b = Worker("a", load=1), Worker("b", load=0)
    found = CacheAware().home([a, b], request)
    assert found is not None
    home = found[0]
    other = b if home is a else a
    home.load, other.load = 2, 1
    policy = CacheAware(imbalance=2)
    assert policy.decide([a, b], [other], request, patient=True) is None
    assert policy.decide([a, b], [other], request, patient=False) == (
        other,
        CacheOutcome.RELEASED,
    )


def test_without_affinity_it_is_least_loaded() -> None:
    a, b, c = Worker("a", load=3), Worker("b", load=1), Worker("c", load=2)
    policy = CacheAware()
    assert policy.decide([a, b, c], [a, b, c], None, patient=True) == (b, CacheOutcome.NONE)
    assert policy.choose([a, b, c]) is b
    assert policy.decide([a], [], None, patient=True) is None  # nothing with room


def test_the_options_are_checked() -> None:
    config = RouterConfig(redis_url="redis://127.0.0.1:1", policy=PolicyName("cache-aware"))
    assert config.policy is PolicyName.CACHE_AWARE
    assert (config.cache_imbalance, config.cache_wait_s) == (DEFAULT_IMBALANCE, 1.0)
    with pytest.raises(ValueError, match="cache_"):
        RouterConfig(redis_url="redis://127.0.0.1:1", cache_imbalance=-1)
    for wait_s in (-0.5, math.nan):
        with pytest.raises(ValueError, match="cache_"):
            RouterConfig(redis_url="redis://127.0.0.1:1", cache_wait_s=wait_s)
