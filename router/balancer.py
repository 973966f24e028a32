"""Choosing a worker: the balancing policies. Pure: imports neither aiohttp nor redis.

A policy picks among the candidates it is given; the caller (router.admission) passes only
workers that have room (this replica's in-flight below the worker's slots, breaker closed) and
that the request has not tried yet, so a policy never has to know about capacity or retries. It
reads a candidate's `load` only (router.upstream says how it is estimated). Four policies,
selected by `--policy`:

    least-loaded  the lowest estimated load, ties at random (the default)
    round-robin   each candidate in turn
    random        uniformly at random
    cache-aware   where the request's prefix is cached (CacheAware), within a load imbalance
"""

from __future__ import annotations

import enum
import hashlib
import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final, Protocol, TypeVar

if TYPE_CHECKING:
    from router.affinity import Affinity

DEFAULT_IMBALANCE: Final = 2  # requests; below a worker's usual 4 slots, so none idles long


class Candidate(Protocol):
    """What a policy reads of a worker (router.upstream.Upstream)."""

    @property
    def load(self) -> int: ...


C = TypeVar("C", bound=Candidate)


class PolicyName(enum.StrEnum):
    """What `--policy` accepts."""

    LEAST_LOADED = "least-loaded"
    ROUND_ROBIN = "round-robin"
    RANDOM = "random"
    CACHE_AWARE = "cache-aware"


class RandomSource(Protocol):
    def random(self) -> float: ...


class Policy(Protocol):
    def choose(self, candidates: Sequence[C]) -> C | None:
        """One of `candidates`, or None if there is none."""
        ...


class LeastLoaded:
    """The least-loaded candidate; ties broken uniformly at random."""

    __slots__ = ("_rng",)

    def __init__(self, rng: RandomSource | None = None) -> None:
        self._rng = rng if rng is not None else random.Random()

    def choose(self, candidates: Sequence[C]) -> C | None:
        best: C | None = None
        best_load = 0
        ties = 0
        for candidate in candidates:
            load = candidate.load
            if best is None or load < best_load:
                best, best_load, ties = candidate, load, 1
            elif load == best_load:
                # Reservoir sampling: the k-th tie wins with probability 1/k, so every tie is
                # equally likely without building a list of them.
                ties += 1
                if self._rng.random() * ties < 1.0:
                    best = candidate
        return best


class RoundRobin:
    """Each candidate in turn: a rotating index over whatever candidates are given."""

    __slots__ = ("_next",)

    def __init__(self) -> None:
        self._next = 0

    def choose(self, candidates: Sequence[C]) -> C | None:
        n = len(candidates)
        if not n:
            return None
        candidate = candidates[self._next % n]
        self._next = (self._next + 1) % n
        return candidate


class Uniform:
    """A candidate uniformly at random, whatever its load."""

    __slots__ = ("_rng",)

    def __init__(self, rng: RandomSource | None = None) -> None:
        self._rng = rng if rng is not None else random.Random()

    def choose(self, candidates: Sequence[C]) -> C | None:
        best: C | None = None
        for seen, candidate in enumerate(candidates, 1):
            if self._rng.random() * seen < 1.0:  # reservoir sampling, as above
                best = candidate
        return best


def make_policy(
    name: PolicyName, rng: RandomSource | None = None, *, imbalance: int = DEFAULT_IMBALANCE
) -> Policy:
    """The policy `--policy` names (`imbalance`: CacheAware's)."""
    match name:
        case PolicyName.LEAST_LOADED:
            return LeastLoaded(rng)
        case PolicyName.ROUND_ROBIN:
            return RoundRobin()
        case PolicyName.RANDOM:
            return Uniform(rng)
        case PolicyName.CACHE_AWARE:
            return CacheAware(imbalance, rng)


class CacheCandidate(Candidate, Protocol):
    """What the cache-aware policy reads of a worker besides its load."""

    @property
    def worker_id(self) -> str: ...

    @property
    def prefixes(self) -> frozenset[str]: ...


A = TypeVar("A", bound=CacheCandidate)


class CacheOutcome(enum.StrEnum):
    """How a cache-aware choice went (the `outcome` label of router_cache_decisions_total)."""

    HIT = "hit"  # the worker advertising the request's deepest prefix
    HASH = "hash"  # none advertises any: the conversation's worker by rendezvous hashing
    DIVERTED = "diverted"  # that worker was too loaded: the least-loaded instead
    RELEASED = "released"  # that worker was full: the least-loaded with room instead
    NONE = "none"  # a request without affinity (not a chat completion): the least-loaded


def weight(key: bytes, worker_id: str) -> int:
    """Rendezvous (highest-random-weight) hashing: the conversation `key` belongs to the worker
    with the highest weight, on every router replica alike; a worker that leaves moves only
    its own conversations."""
    digest = hashlib.blake2b(key + b"\0" + worker_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def depth(prefixes: frozenset[str], affinity: Affinity) -> int:
    """The canonical length of the request's deepest boundary in `prefixes`; 0 if none is."""
    if prefixes:
        for boundary in reversed(affinity.boundaries):
            if boundary.digest in prefixes:
                return boundary.chars
    return 0


class CacheAware:
    """Cache-aware: a request goes to its home, the worker most likely to hold its prompt's
    prefix, unless that is `imbalance` requests more loaded than the least-loaded worker with
    room (then the least-loaded wins, so a hot conversation cannot pin one worker).

    The home is the worker advertising the request's deepest message boundary (router.affinity;
    ties and no advertisement at all: rendezvous hashing of the conversation key over worker
    ids). It depends only on the registry and the request, so replicas agree without sharing
    state. Without affinity it is LeastLoaded. router.admission lets a request whose home is
    full wait for it (`decide(patient=True)`), within a bound.
    """

    __slots__ = ("_least", "imbalance")

    def __init__(self, imbalance: int = DEFAULT_IMBALANCE, rng: RandomSource | None = None) -> None:
        self.imbalance = imbalance
        self._least = LeastLoaded(rng)

    def choose(self, candidates: Sequence[C]) -> C | None:
        return self._least.choose(candidates)

    def home(self, candidates: Sequence[A], affinity: Affinity) -> tuple[A, CacheOutcome] | None:
        """The request's home among `candidates` and whether a cached prefix made it so."""
        best: A | None = None
        best_score = (0, 0)
        for candidate in candidates:
            score = (depth(candidate.prefixes, affinity), weight(affinity.key, candidate.worker_id))
            if best is None or score > best_score:
                best, best_score = candidate, score
        if best is None:
            return None
        return best, CacheOutcome.HIT if best_score[0] else CacheOutcome.HASH

    def decide(
        self,
        candidates: Sequence[A],
        room: Sequence[A],
        affinity: Affinity | None,
        *,
        patient: bool,
    ) -> tuple[A, CacheOutcome] | None:
        """The worker among `room` (those with room, a subset of `candidates`) for a request,
        and why; None if it should wait for its home (full, `patient`, within the imbalance)."""
        found = None if affinity is None else self.home(candidates, affinity)
        least = self._least.choose(room)
        if least is None:
            return None
        if found is None:
            return least, CacheOutcome.NONE
        home, outcome = found
        if home.load - least.load > self.imbalance:
            return least, CacheOutcome.DIVERTED
        if any(candidate is home for candidate in room):
            return home, outcome
        if patient:
            return None
        return least, CacheOutcome.RELEASED
