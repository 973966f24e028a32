"""Choosing a worker: the balancing policies. Pure: imports neither aiohttp nor redis.

A policy picks among the candidates it is given; the caller (router.admission) passes only
workers that have room (this replica's in-flight below the worker's slots, breaker closed) and
that the request has not tried yet, so a policy never has to know about capacity or retries. It
reads a candidate's `load` only (router.upstream says how it is estimated). Three policies,
selected by `--policy`:

    least-loaded  the lowest estimated load, ties at random (the default)
    round-robin   each candidate in turn
    random        uniformly at random
"""

from __future__ import annotations

import enum
import random
from collections.abc import Sequence
from typing import Protocol, TypeVar


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


def make_policy(name: PolicyName, rng: RandomSource | None = None) -> Policy:
    """The policy `--policy` names."""
    match name:
        case PolicyName.LEAST_LOADED:
            return LeastLoaded(rng)
        case PolicyName.ROUND_ROBIN:
            return RoundRobin()
        case PolicyName.RANDOM:
            return Uniform(rng)
