"""The router's metrics: label values dashboards query, pre-bound series, view-derived gauges."""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from importlib import metadata

from contract.registry import WorkerRecord, WorkerState
from contract.telemetry import LATENCY_BUCKETS, version_of
from router.breaker import Breaker, BreakerState
from router.metrics import (
    CANCELLED,
    CancelPhase,
    QueueRejection,
    RegistryOp,
    Rejection,
    Route,
    RouterMetrics,
    UpstreamError,
)

from .fakes import make_record


def test_label_values_are_the_ones_dashboards_query() -> None:
    # deploy/ (dashboard, alert rules) and the README name these very strings.
    assert list(CancelPhase) == ["queued", "waiting", "streaming", "stalled"]
    assert list(UpstreamError) == ["connect", "busy", "status", "timeout", "broken"]
    assert list(QueueRejection) == ["full", "timeout"]
    assert list(RegistryOp) == ["read", "events"]  # bad records: their own counter
    assert list(Route) == ["chat_completions", "completions", "embeddings", "models"]
    assert list(Rejection) == [
        "invalid_request",
        "invalid_api_key",
        "model_not_found",
        "request_timeout",
        "payload_too_large",
        "unsupported_media_type",
        "rate_limited",
        "unavailable",
    ]
    assert (BreakerState.OPEN, BreakerState.CLOSED) == ("open", "closed")


def test_an_enum_label_is_exported_as_its_value() -> None:
    metrics = RouterMetrics()
    metrics.cancellations.labels(CancelPhase.STALLED).inc()
    assert b'router_cancellations_total{phase="stalled"} 1.0' in metrics.render()


def test_each_relayed_endpoint_has_its_own_series() -> None:
    metrics = RouterMetrics()
    embeddings = metrics.series(Route.EMBEDDINGS, "m", False)
    assert metrics.series(Route.EMBEDDINGS, "m", False) is embeddings
    assert embeddings is not metrics.series(Route.COMPLETIONS, "m", False)
    assert metrics.chat_series("m", False) is metrics.series(Route.CHAT_COMPLETIONS, "m", False)
    embeddings.finish(200, 0.1)

    def count(endpoint: str) -> float | None:
        labels = {"endpoint": endpoint, "model": "m", "status_class": "2xx"}
        return metrics.registry.get_sample_value("router_requests_total", labels)

    assert [count(e) for e in ("embeddings", "completions", "chat_completions")] == [1, 0, 0]


def test_a_chat_series_counts_by_status_class() -> None:
    metrics = RouterMetrics()
    series = metrics.chat_series("m", True)
    assert metrics.chat_series("m", True) is series  # bound once
    for status in (200, 404, 503, CANCELLED):
        series.finish(status, 0.5)

    def count(status_class: str) -> float | None:
        labels = {"endpoint": "chat_completions", "model": "m", "status_class": status_class}
        return metrics.registry.get_sample_value("router_requests_total", labels)

    assert [count(c) for c in ("2xx", "4xx", "5xx", "cancelled", "3xx")] == [1, 1, 1, 1, 0]
    duration = {"model": "m", "stream": "true"}
    assert metrics.registry.get_sample_value("router_request_duration_seconds_count", duration) == 4
    [family] = [
        f for f in metrics.registry.collect() if f.name == "router_request_duration_seconds"
    ]
    bounds = [float(s.labels["le"]) for s in family.samples if s.name.endswith("_bucket")]
    assert bounds == [*LATENCY_BUCKETS, float("inf")]


def test_model_tokens_add_up_per_model_and_kind() -> None:
    metrics = RouterMetrics()
    metrics.chat_series("m", True).count_tokens(10, 3)
    metrics.chat_series("m", False).count_tokens(5, 2)
    metrics.series(Route.COMPLETIONS, "other", False).count_tokens(1, 1)

    def tokens(model: str, kind: str) -> float | None:
        labels = {"model": model, "kind": kind}
        return metrics.registry.get_sample_value("router_model_tokens_total", labels)

    assert (tokens("m", "prompt"), tokens("m", "completion")) == (15, 5)
    assert (tokens("other", "prompt"), tokens("other", "completion")) == (1, 1)


def test_build_info_names_the_versions() -> None:
    labels = {
        "version": metadata.version("xero-router"),
        "python": platform.python_version(),
        "aiohttp": metadata.version("aiohttp"),
    }
    value = RouterMetrics().registry.get_sample_value("router_build_info", labels)
    assert value == 1
    assert version_of("no-such-distribution") == "none"


@dataclass
class Worker:
    record: WorkerRecord
    in_flight: int
    breaker: Breaker = field(default_factory=Breaker)
    prefixes: frozenset[str] = frozenset()


@dataclass
class View:
    upstreams: dict[str, Worker]
    age_s: float | None

    def registry_age_s(self) -> float | None:
        return self.age_s


def test_the_view_gauges_are_read_at_scrape_time() -> None:
    metrics = RouterMetrics()
    view = View({"w1": Worker(make_record("w1", "http://127.0.0.1:1"), 2)}, None)
    metrics.watch_view(view)
    text = metrics.render().decode()
    assert 'router_worker_in_flight{model="smollm2-135m",worker="w1"} 2.0' in text
    assert 'router_registry_workers{model="smollm2-135m",state="ready"} 1.0' in text
    assert "router_registry_staleness_seconds +Inf" in text
    draining = make_record("w2", "http://127.0.0.1:2", state=WorkerState.DRAINING)
    view.upstreams["w2"] = Worker(draining, 0)
    view.age_s = 1.5
    text = metrics.render().decode()
    assert 'router_registry_workers{model="smollm2-135m",state="draining"} 1.0' in text
    assert "router_registry_staleness_seconds 1.5" in text
    assert 'router_worker_breaker_open{model="smollm2-135m",worker="w1"} 0.0' in text
    view.upstreams["w1"].breaker.state = BreakerState.HALF_OPEN  # probing: still put aside
    text = metrics.render().decode()
    assert 'router_worker_breaker_open{model="smollm2-135m",worker="w1"} 1.0' in text
    metrics.unwatch_view()
    assert "router_worker_in_flight" not in metrics.render().decode()
