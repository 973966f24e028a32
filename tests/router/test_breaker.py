"""The circuit breaker's state machine, on a hand-driven clock."""

from __future__ import annotations

import pytest

from router.breaker import MAX_OPEN_S, Breaker, BreakerSettings, BreakerState

SETTINGS = BreakerSettings(failures=2, open_s=1.0)


def state(breaker: Breaker) -> BreakerState:
    return breaker.state


def test_opens_after_consecutive_failures_only() -> None:
    breaker = Breaker()
    assert breaker.failed(0.0, False, SETTINGS) is None
    assert breaker.succeeded(False) is False  # a success resets the streak
    assert breaker.failed(0.0, False, SETTINGS) is None
    assert breaker.failed(0.0, False, SETTINGS) == 1.0
    assert state(breaker) is BreakerState.OPEN
    assert not breaker.allows(0.5)


def test_half_open_lets_one_probe_through() -> None:
    breaker = Breaker()
    breaker.failed(0.0, False, SETTINGS)
    breaker.failed(0.0, False, SETTINGS)
    assert breaker.allows(1.0)
    assert state(breaker) is BreakerState.HALF_OPEN
    assert breaker.dispatched() is True  # the probe
    assert not breaker.allows(1.0)  # nobody else meanwhile
    assert breaker.succeeded(False) is False  # an older request's success proves nothing
    assert breaker.succeeded(True) is True
    assert state(breaker) is BreakerState.CLOSED
    assert breaker.dispatched() is False


def test_failed_probes_double_the_open_time_up_to_a_cap() -> None:
    breaker = Breaker()
    breaker.failed(0.0, False, SETTINGS)
    now = 0.0
    delays = [breaker.failed(now, False, SETTINGS)]
    for _ in range(8):
        now += delays[-1] or 0.0
        assert breaker.allows(now)
        probe = breaker.dispatched()
        delays.append(breaker.failed(now, probe, SETTINGS))
    assert delays[:6] == [1.0, 2.0, 4.0, 8.0, 16.0, MAX_OPEN_S]
    assert delays[-1] == MAX_OPEN_S
    # A success brings the first open time back.
    now += MAX_OPEN_S
    assert breaker.allows(now)
    assert breaker.succeeded(breaker.dispatched())
    breaker.failed(now, False, SETTINGS)
    assert breaker.failed(now, False, SETTINGS) == 1.0


def test_an_abandoned_probe_frees_its_place() -> None:
    breaker = Breaker()
    breaker.failed(0.0, False, SETTINGS)
    breaker.failed(0.0, False, SETTINGS)
    assert breaker.allows(2.0)
    probe = breaker.dispatched()
    assert not breaker.allows(2.0)
    assert breaker.abandoned(False) is False  # not the probe: changes nothing
    assert breaker.abandoned(probe) is True
    assert breaker.allows(2.0)


def test_late_failures_while_open_change_nothing() -> None:
    breaker = Breaker()
    breaker.failed(0.0, False, SETTINGS)
    breaker.failed(0.0, False, SETTINGS)
    assert breaker.failed(0.5, False, SETTINGS) is None
    assert breaker.allows(1.0)  # still 1 s from the opening, not from the late failure


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="failures"):
        BreakerSettings(failures=0, open_s=1.0)
    with pytest.raises(ValueError, match="open_s"):
        BreakerSettings(failures=2, open_s=0)
