"""One worker's load counters and record updates: counters that never drift, room by slots."""

from __future__ import annotations

import string
from dataclasses import replace
from urllib.parse import urlsplit

from hypothesis import given, settings
from hypothesis import strategies as st

from contract.registry import url_problem
from router.breaker import BreakerSettings
from router.upstream import API_PATHS, FAILED_PENALTY, Api, Upstream, worker_urls

from .fakes import make_record

URL = "http://127.0.0.1:1"


def upstream(reported: int = 0, slots: int = 4) -> Upstream:
    return Upstream(make_record("w", URL, running=reported, slots=slots), seen_at=0.0)


def report(worker: Upstream, queue_depth: int) -> None:
    """A fresh heartbeat, as the view applies it."""
    record = worker.record
    worker.update(
        replace(record, running=queue_depth, waiting=0, heartbeat_ms=record.heartbeat_ms + 1),
        reported=True,
    )


def test_local_starts_count_until_the_next_report() -> None:
    worker = upstream(1)
    worker.begin()
    worker.begin()
    assert worker.load == 3
    report(worker, 0)  # a fresh heartbeat replaces the local estimate
    assert worker.load == 0
    assert worker.in_flight == 2  # the true local count is unaffected


def test_finishing_a_reported_request_lowers_the_load() -> None:
    worker = upstream(3)
    worker.end()  # started before the report, finished after it
    assert worker.load == 2


def test_counters_never_go_negative() -> None:
    worker = upstream(0)
    worker.end()
    worker.end()
    assert worker.in_flight == 0
    assert worker.load == 0
    worker.begin()
    assert worker.in_flight == 1
    assert worker.load == 0  # one start against two finishes still clamps at zero
    report(worker, -1)
    assert worker.load == 0
    worker.end()
    worker.end()
    assert worker.in_flight == 0


def test_a_refusing_worker_is_loaded_until_it_reports() -> None:
    worker = upstream(0)
    worker.refused()
    assert worker.load == FAILED_PENALTY
    report(worker, 2)
    assert worker.load == 2


def test_a_record_without_a_new_heartbeat_keeps_the_estimate() -> None:
    worker = upstream(1)
    worker.begin()
    worker.update(replace(worker.record, running=7), reported=False)
    assert worker.load == 2


def test_room_is_this_replicas_in_flight_below_the_slots() -> None:
    worker = upstream(reported=10, slots=2)
    assert worker.has_room  # others' load counts in the choice, not in admission
    worker.begin()
    assert worker.has_room
    worker.begin()
    assert not worker.has_room
    worker.end()
    assert worker.has_room
    assert upstream(slots=0).slots == 1
    worker.update(replace(worker.record, slots=1), reported=False)
    assert not worker.has_room


def test_a_restarted_worker_gets_a_fresh_breaker_and_url() -> None:
    worker = upstream()
    settings = BreakerSettings(failures=1, open_s=1.0)
    assert worker.breaker.failed(0.0, False, settings) == 1.0
    aside = worker.breaker
    report(worker, 0)
    assert worker.breaker is aside  # the same process: still aside
    worker.update(replace(worker.record, started_ms=worker.record.started_ms + 1), reported=True)
    assert worker.breaker is not aside and worker.breaker.allows(0.0)
    worker.update(replace(worker.record, url="http://127.0.0.1:2/"), reported=False)
    assert str(worker.urls[Api.CHAT]) == "http://127.0.0.1:2/v1/chat/completions"
    assert str(worker.urls[Api.COMPLETIONS]) == "http://127.0.0.1:2/v1/completions"
    assert str(worker.urls[Api.EMBEDDINGS]) == "http://127.0.0.1:2/v1/embeddings"


# What contract.registry accepts as a worker URL, the router can always parse: a record that
# passed validation never raises while the view builds its Upstream.
HOSTISH = string.ascii_letters + string.digits + "-._%[]:@?#/ \t\n\x00é"
url_host = st.one_of(
    st.sampled_from(["127.0.0.1", "worker-0.svc", "w_1", "[::1]", "[fe80::1%25eth0]", "[1.2.3.4]"]),
    st.text(HOSTISH, min_size=1, max_size=12),
    st.text(max_size=6),
)
url_port = st.one_of(
    st.just(""),
    st.integers(1, 65535).map(":{}".format),
    st.integers(-5, 70_000).map(":{}".format),
    st.text(HOSTISH, max_size=6).map(":".__add__),
)
url_path = st.one_of(st.just(""), st.just("/"), st.text(HOSTISH, max_size=12).map("/".__add__))
worker_url = st.one_of(
    st.builds(
        "{}{}{}{}".format,
        st.sampled_from(["http://", "https://"])
        | st.sampled_from(["ftp://", "", "http:/", "HTTP://"]),
        url_host,
        url_port,
        url_path,
    ),
    st.text(max_size=40),
)


@settings(max_examples=500, deadline=None)
@given(worker_url)
def test_fuzz_every_valid_worker_url_parses_for_the_router(url: str) -> None:
    if url_problem(url) is not None:
        return
    urls = worker_urls(url)
    assert [u.path.endswith(p) for u, p in zip(urls, API_PATHS, strict=True)] == [True] * 3
    parts = urlsplit(url)
    assert urls[Api.CHAT].port == (parts.port or {"http": 80, "https": 443}[parts.scheme])
    assert urls[Api.CHAT].host is not None
