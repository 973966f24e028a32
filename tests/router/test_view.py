"""The live registry view: events, full re-reads, local ageing, Redis outages, no worker, and
whatever records a reader lets through (fuzzed)."""

from __future__ import annotations

import contextlib
from dataclasses import replace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from contract.errors import ModelNotFound, ServiceUnavailable
from contract.registry import (
    Event,
    EventType,
    InvalidRecord,
    Snapshot,
    WorkerRecord,
    WorkerState,
)
from router.view import RegistryView
from tests.contract.test_registry_records import mangled_records

from .fakes import MODEL, make_record


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


URL = "http://127.0.0.1:1"


def test_events_update_load_in_place_and_rebuild_only_on_change() -> None:
    view = RegistryView(stale_s=2.5, clock=FakeClock())
    record = make_record("a", URL, running=2)
    view.apply_event(Event(EventType.JOIN, "a", record))
    ready = view.ready
    upstream = view.candidates(MODEL)[0]
    assert upstream.load == 2
    assert view.models[MODEL] == record.started_ms // 1000

    view.apply_event(
        Event(EventType.LOAD, "a", replace(record, heartbeat_ms=record.heartbeat_ms + 1, running=0))
    )
    assert view.ready is ready  # same index, counters updated in place
    assert upstream.load == 0

    stale = replace(record, heartbeat_ms=record.heartbeat_ms - 5, running=9)
    view.apply_event(Event(EventType.LOAD, "a", stale))  # out of order: ignored
    assert upstream.load == 0

    draining = replace(record, heartbeat_ms=record.heartbeat_ms + 2, state=WorkerState.DRAINING)
    view.apply_event(Event(EventType.DRAIN, "a", draining))
    assert view.candidates(MODEL) == ()
    assert "a" in view.upstreams

    view.apply_event(Event(EventType.LEAVE, "a", None))
    assert view.upstreams == {}
    assert MODEL in view.models  # still known: 503, not 404


def test_ageing_uses_our_clock_and_pauses_while_redis_is_silent() -> None:
    clock = FakeClock()
    view = RegistryView(stale_s=2.5, clock=clock)
    record = make_record("a", URL)
    view.apply_event(Event(EventType.JOIN, "a", record))

    clock.now += 1.0
    view.apply_snapshot(Snapshot({"a": record}, {}), started_at=clock.now)  # no new heartbeat
    clock.now += 1.0
    view.apply_snapshot(Snapshot({"a": record}, {}), started_at=clock.now)
    assert view.expire() == []
    clock.now += 0.6  # 2.6 s since the heartbeat was last seen to advance
    view.apply_snapshot(Snapshot({"a": record}, {}), started_at=clock.now)
    assert view.expire() == ["a"]
    # Its key lingers in Redis with the same heartbeat: not taken for a live worker.
    view.apply_snapshot(Snapshot({"a": record}, {}), started_at=clock.now)
    assert view.upstreams == {}
    # A fresh heartbeat brings it back.
    view.apply_snapshot(
        Snapshot({"a": replace(record, heartbeat_ms=record.heartbeat_ms + 1)}, {}), clock.now
    )
    assert list(view.upstreams) == ["a"]

    clock.now += 10.0  # no contact with Redis at all: keep the last view
    assert view.expire() == []
    assert list(view.upstreams) == ["a"]


def test_full_read_spares_a_worker_that_joined_while_it_ran() -> None:
    clock = FakeClock()
    view = RegistryView(stale_s=2.5, clock=clock)
    started = clock.now
    clock.now += 0.01
    view.apply_event(Event(EventType.JOIN, "new", make_record("new", URL)))
    view.apply_event(Event(EventType.JOIN, "old", make_record("old", URL)))
    view.upstreams["old"].seen_at = started - 1  # seen before the read began
    view.apply_snapshot(Snapshot({}, {MODEL: 1}), started_at=started)
    assert list(view.upstreams) == ["new"]
    assert view.models[MODEL] == 1


def test_after_redis_comes_back_workers_get_time_to_show_up_again() -> None:
    clock = FakeClock()
    view = RegistryView(stale_s=2.5, clock=clock)
    changes: list[int] = []
    view.add_listener(lambda: changes.append(len(view.upstreams)))
    for worker_id in ("a", "b"):
        view.apply_event(Event(EventType.JOIN, worker_id, make_record(worker_id, URL)))
    assert changes == [1, 2]

    view.contact_lost()
    clock.now += 10.0  # the outage: nothing is aged meanwhile
    assert view.expire() == []
    # Redis is back, empty: neither absence nor silence drops anyone for 2 x stale_s.
    for _ in range(4):
        view.apply_snapshot(Snapshot({}, {}), started_at=clock.now - 0.01)
        assert view.expire() == []
        clock.now += 1.2
    assert sorted(view.upstreams) == ["a", "b"]
    # "a" re-registers; "b" never does and is gone once the grace is over.
    again = replace(make_record("a", URL), heartbeat_ms=make_record("a", URL).heartbeat_ms + 5)
    view.apply_event(Event(EventType.JOIN, "a", again))
    clock.now += 0.3  # 5.1 s since the recovery
    view.apply_snapshot(Snapshot({"a": again}, {}), started_at=clock.now - 0.01)
    assert list(view.upstreams) == ["a"]
    assert changes[-1] == 1


def test_a_slots_change_is_a_capacity_change() -> None:
    view = RegistryView(stale_s=2.5, clock=FakeClock())
    record = make_record("a", URL, slots=1)
    view.apply_event(Event(EventType.JOIN, "a", record))
    calls: list[None] = []
    view.add_listener(lambda: calls.append(None))
    bigger = replace(record, slots=3, heartbeat_ms=record.heartbeat_ms + 1)
    view.apply_event(Event(EventType.LOAD, "a", bigger))
    assert view.upstreams["a"].slots == 3
    assert len(calls) == 1


def test_no_worker_tells_unknown_from_down_from_not_loaded() -> None:
    view = RegistryView(stale_s=2.5, clock=FakeClock())
    error = view.no_worker(MODEL)
    assert isinstance(error, ServiceUnavailable)  # nothing read yet: not called missing
    assert "not loaded the worker registry" in error.message
    assert error.headers() == {"Retry-After": "1"}

    view.apply_snapshot(Snapshot({}, {}), started_at=0.0)
    error = view.no_worker(MODEL)
    assert isinstance(error, ModelNotFound)
    assert (error.status, error.code, error.param) == (404, "model_not_found", "model")

    view.apply_snapshot(Snapshot({}, {MODEL: 1}), started_at=0.0)
    error = view.no_worker(MODEL)  # served once, none up now
    assert isinstance(error, ServiceUnavailable)
    assert error.message == f"No worker is serving model `{MODEL}` right now; retry shortly."
    assert error.headers() == {"Retry-After": "1"}


@settings(max_examples=200, deadline=None)
@given(st.lists(mangled_records(), min_size=1, max_size=5), st.sampled_from(list(EventType)))
def test_fuzz_whatever_decodes_the_view_takes(raws: list[dict[Any, Any]], kind: EventType) -> None:
    """Anything a reader lets through (contract.registry's checks) applies without raising, by
    event or by full read, and the good worker beside it stays."""
    good = make_record("good", URL)
    view = RegistryView(stale_s=2.5, clock=FakeClock())
    view.apply_event(Event(EventType.JOIN, "good", good))
    records: list[WorkerRecord] = []
    for raw in raws:
        with contextlib.suppress(InvalidRecord):
            records.append(replace(WorkerRecord.from_mapping(raw), worker_id="other"))
    for record in records:
        view.apply_event(Event(kind, "other", None if kind is EventType.LEAVE else record))
    workers = {"good": good} | ({"other": records[-1]} if records else {})
    view.apply_snapshot(Snapshot(workers, {}), 0.0)
    assert "good" in view.upstreams
