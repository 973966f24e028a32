"""Choosing a worker: the balancing policies. Pure: imports neither aiohttp nor redis.

A policy picks among the candidates it is given; the caller (router.admission) passes only
workers that have room (this replica's in-flight below the worker's slots, breaker closed), so a
policy never has to know about capacity. Three policies, selected by `--policy`:

    least-loaded  the lowest estimated load (below), ties at random (the default)
    round-robin   each candidate in turn
    random        uniformly at random

A worker's load, as this replica estimates it, is what the worker last reported (running +
waiting) plus the requests this replica started since that report, minus those it finished since
(a request that was already counted in the report and then finished lowers the load too). Each
report resets the deltas, so estimation errors last at most one heartbeat. A worker that just
refused a request (no connection, or full) counts as loaded by FAILED_PENALTY until its next
report, so it is tried last rather than first again. `in_flight` is the plain count of this
replica's open requests to the worker, for metrics.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Container, Sequence
from typing import Final, Protocol, TypeVar

FAILED_PENALTY: Final = 1_000_000


class WorkerLoad:
    """Load counters of one worker, mutated by the dispatcher; never negative.

    `slots` is how many requests the worker runs at once (its registry record says); this
    replica admits at most that many to it (`has_room`).
    """

    __slots__ = (
        "_finished",
        "_penalty",
        "_reported",
        "_started",
        "in_flight",
        "slots",
        "worker_id",
    )

    def __init__(self, worker_id: str, reported: int = 0, slots: int = 1) -> None:
        self.worker_id = worker_id
        self.slots = max(1, slots)
        self._reported = max(0, reported)
        self._started = 0
        self._finished = 0
        self._penalty = 0
        self.in_flight = 0

    @property
    def has_room(self) -> bool:
        return self.in_flight < self.slots

    @property
    def load(self) -> int:
        return max(0, self._reported + self._started - self._finished) + self._penalty

    def report(self, queue_depth: int) -> None:
        """A fresh heartbeat: the worker's own count replaces our estimate."""
        self._reported = max(0, queue_depth)
        self._started = 0
        self._finished = 0
        self._penalty = 0

    def refused(self) -> None:
        """It could not take a request; prefer every other worker until it reports again."""
        self._penalty = FAILED_PENALTY

    def begin(self) -> None:
        self._started += 1
        self.in_flight += 1

    def end(self) -> None:
        self._finished += 1
        if self.in_flight > 0:
            self.in_flight -= 1


L = TypeVar("L", bound=WorkerLoad)


class PolicyName(enum.StrEnum):
    """What `--policy` accepts."""

    LEAST_LOADED = "least-loaded"
    ROUND_ROBIN = "round-robin"
    RANDOM = "random"


class RandomSource(Protocol):
    def random(self) -> float: ...


class Policy(Protocol):
    def choose(self, candidates: Sequence[L], exclude: Container[str] = ()) -> L | None:
        """A candidate whose worker_id is not in `exclude`, or None if there is none."""
        ...


class LeastLoaded:
    """The least-loaded candidate; ties broken uniformly at random."""

    __slots__ = ("_rng",)

    def __init__(self, rng: RandomSource | None = None) -> None:
        self._rng = rng if rng is not None else random.Random()

    def choose(self, candidates: Sequence[L], exclude: Container[str] = ()) -> L | None:
        best: L | None = None
        best_load = 0
        ties = 0
        for candidate in candidates:
            if candidate.worker_id in exclude:
                continue
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

    def choose(self, candidates: Sequence[L], exclude: Container[str] = ()) -> L | None:
        n = len(candidates)
        for i in range(n):
            candidate = candidates[(self._next + i) % n]
            if candidate.worker_id not in exclude:
                self._next = (self._next + i + 1) % n
                return candidate
        return None


class Uniform:
    """A candidate uniformly at random, whatever its load."""

    __slots__ = ("_rng",)

    def __init__(self, rng: RandomSource | None = None) -> None:
        self._rng = rng if rng is not None else random.Random()

    def choose(self, candidates: Sequence[L], exclude: Container[str] = ()) -> L | None:
        best: L | None = None
        seen = 0
        for candidate in candidates:
            if candidate.worker_id in exclude:
                continue
            seen += 1
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
