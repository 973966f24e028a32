"""A circuit breaker per worker: put a failing worker aside, probe it, take it back when healthy.

    CLOSED ── `failures` failures in a row ──▶ OPEN (for `open_s`)
    OPEN ── `open_s` has passed ──▶ HALF_OPEN: exactly one request, the probe, may go
    HALF_OPEN ── the probe succeeds ──▶ CLOSED, and the open time goes back to `open_s`
    HALF_OPEN ── the probe fails ──▶ OPEN again, for twice as long (up to MAX_OPEN_S)

A failure is what the relay sees before or while the worker answers that shows it cannot serve:
a refused, reset or timed-out connection, a 5xx other than 503, a stream broken or silent
mid-way, a frame that never ends. A success is an answer with a status below 500. A 503 is
neither: the worker is up and full or draining, which the load penalty (`Upstream.refused`)
handles. Nor is a timeout on a worker that has the request and is still at it (slow is not
dead: router.proxy).

The probe is a real request. It is chosen only while the worker is half-open, and a failure
before the first byte sends it on to another worker, so probing costs a client at most one quick
failover. The state lives on each `Upstream` (a worker that restarts gets a fresh one) and only
router.admission moves it; the settings, built from the router's config, are shared. Pure: no
aiohttp, no redis, no clock of its own (callers pass `now`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

MAX_OPEN_S: Final = 30.0


class BreakerState(enum.StrEnum):
    """Also the `state` label of router_breaker_transitions_total."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    failures: int  # consecutive failures that open the breaker
    open_s: float  # first time put aside; doubles on each failed probe

    def __post_init__(self) -> None:
        if self.failures < 1:
            raise ValueError(f"failures must be >= 1, got {self.failures}")
        if not self.open_s > 0:
            raise ValueError(f"open_s must be > 0, got {self.open_s}")


class Breaker:
    """One worker's breaker state; every method is O(1) and never blocks."""

    __slots__ = ("_failures", "_open_for_s", "_open_until", "_probing", "state")

    def __init__(self) -> None:
        self.state = BreakerState.CLOSED
        self._failures = 0
        self._open_until = 0.0
        self._open_for_s = 0.0  # 0: not opened since the last success
        self._probing = False

    def allows(self, now: float) -> bool:
        """May a request go to this worker now? (Moves OPEN to HALF_OPEN when its time is up.)"""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN:
            if now < self._open_until:
                return False
            self.state = BreakerState.HALF_OPEN
            self._probing = False
        return not self._probing

    def dispatched(self) -> bool:
        """A request was sent; True if it is the half-open probe."""
        if self.state is BreakerState.HALF_OPEN and not self._probing:
            self._probing = True
            return True
        return False

    def succeeded(self, probe: bool) -> bool:
        """The worker answered; True if that closed the breaker."""
        if self.state is BreakerState.CLOSED:
            self._failures = 0
            return False
        if probe and self.state is BreakerState.HALF_OPEN:
            self.state = BreakerState.CLOSED
            self._failures = 0
            self._open_for_s = 0.0
            self._probing = False
            return True
        return False  # an older request finishing while open proves little

    def failed(self, now: float, probe: bool, settings: BreakerSettings) -> float | None:
        """The worker failed a request; the seconds it is now put aside for, if it just opened."""
        if self.state is BreakerState.CLOSED:
            self._failures += 1
            if self._failures < settings.failures:
                return None
        elif self.state is BreakerState.OPEN or not probe:
            return None  # already aside, or a request sent before it opened
        first = settings.open_s
        self._open_for_s = first if not self._open_for_s else min(MAX_OPEN_S, self._open_for_s * 2)
        self._open_for_s = max(self._open_for_s, first)
        self.state = BreakerState.OPEN
        self._open_until = now + self._open_for_s
        self._probing = False
        return self._open_for_s

    def abandoned(self, probe: bool) -> bool:
        """The probe ended with neither verdict (client left, worker full); True if freed."""
        if probe and self.state is BreakerState.HALF_OPEN and self._probing:
            self._probing = False
            return True
        return False
