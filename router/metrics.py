"""The router's Prometheus metrics, all in one object that owns its CollectorRegistry.

Families (label values are bounded: `model` is a model in the registry or "other", `worker` a
worker id from the registry, the rest are fixed sets):

    router_requests_total{endpoint,model,status_class}   status_class: 2xx..5xx, or "cancelled"
    router_project_requests_total{project,project_endpoint,status_class}
                                                          relayed requests; ids come from
                                                          Redis records, project "none" when
                                                          auth is off or the key was refused
    router_request_duration_seconds{model,stream}         relayed requests, arrival to last byte
    router_time_to_first_byte_seconds{model,stream}       arrival to the first upstream body chunk
                                                          (for a stream: the first SSE event)
    router_inter_chunk_gap_seconds{model}                 between upstream chunks of a stream
    router_overhead_seconds                               arrival to upstream request sent,
                                                          less the admission queue wait
    router_queue_wait_seconds                             admission queue wait (0: admitted at once)
    router_queue_length{model}                            requests waiting for worker capacity
    router_cache_decisions_total{model,outcome}           cache-aware choices: hit, hash, diverted,
                                                          released, none (router.balancer)
    router_worker_prefixes{worker,model}                  prefixes a worker advertises it caches
    router_queue_rejections_total{reason}                 full, timeout (answered 503); full
                                                          counts a waiter displaced by another
                                                          tenant's newcomer (router.admission)
    router_relay_limits_total{limit}                      relays cut by a bound: frame, body,
                                                          duration (router.proxy)
    router_breaker_transitions_total{worker,state}        open, closed
    router_worker_in_flight{worker,model}                 this replica's open requests per worker
    router_worker_breaker_open{worker,model}              1 while its breaker is open or half
                                                          open (probing), else 0
    router_upstream_errors_total{worker,kind}             connect, busy (503), status (other
                                                          5xx), timeout, broken
    router_upstream_retries_total{model}                  attempts after the first
    router_cancellations_total{phase}                     client hung up: queued, waiting,
                                                          streaming; or stopped reading: stalled
    router_rejections_total{reason}                       requests refused before any upstream
    router_registry_workers{model,state}                  workers in this replica's view
    router_registry_staleness_seconds                     since the last successful full read
    router_registry_errors_total{op}                      read, events, decode
    router_tokens_total{project,kind}                     keyed requests' tokens as metered
    router_model_tokens_total{model,kind}                 (the same tokens by model)
    router_key_tokens_total{key_id,kind}                  (router.access): prompt, completion
    router_settle_errors_total                            usage that Redis did not take
    router_registry_invalid_records_total{source}         records (read) and events (events)
                                                          skipped as invalid; a full read counts
                                                          each bad record it meets again
    router_build_info{version,python,aiohttp}             1: what this replica runs

Relayed requests are chat completions, text completions and embeddings (the `endpoint` label of
router_requests_total tells them apart; an embedding model has its own `model` label, so the
histograms do not mix its timings with chat's). Request-path series are bound once per label
set and cached, so the hot path does a dict lookup and an observe, not a label resolution;
view-derived gauges are computed at scrape time.
"""

from __future__ import annotations

import enum
import math
import platform
from collections.abc import Iterator, Mapping
from typing import Any, Final, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from contract.registry import WorkerRecord
from contract.telemetry import DISTRIBUTION, LATENCY_BUCKETS, StatusClass, status_class, version_of
from router.breaker import BreakerState

OTHER_MODEL: Final = "other"
CANCELLED: Final = 0  # the status recorded for a request whose client hung up

FIRST_BYTE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
GAP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
OVERHEAD_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
)  # fmt: skip


# Label values: dashboards and alerts (deploy/) query these very strings.


class Route(enum.StrEnum):
    """The `endpoint` label of router_requests_total."""

    CHAT_COMPLETIONS = "chat_completions"
    COMPLETIONS = "completions"
    EMBEDDINGS = "embeddings"
    MODELS = "models"


class CancelPhase(enum.StrEnum):
    """Where a request was when its client hung up (or, `stalled`, stopped reading)."""

    QUEUED = "queued"
    WAITING = "waiting"
    STREAMING = "streaming"
    STALLED = "stalled"


class UpstreamError(enum.StrEnum):
    """How a worker failed a request; also how an attempt ended before the first byte."""

    CONNECT = "connect"  # no connection: refused, reset, or the connect timeout
    BUSY = "busy"  # it answered 503: full or draining
    STATUS = "status"  # it answered another 5xx
    TIMEOUT = "timeout"  # no first byte, or a gap between chunks, within its bound
    BROKEN = "broken"  # the connection broke while it answered


class Rejection(enum.StrEnum):
    """Why a request was refused before any worker was involved."""

    INVALID_REQUEST = "invalid_request"
    INVALID_API_KEY = "invalid_api_key"
    MODEL_NOT_FOUND = "model_not_found"
    REQUEST_TIMEOUT = "request_timeout"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    RATE_LIMITED = "rate_limited"
    UNAVAILABLE = "unavailable"


class QueueRejection(enum.StrEnum):
    FULL = "full"
    TIMEOUT = "timeout"


class RelayLimit(enum.StrEnum):
    """The bound that cut a relay (the `limit` label of router_relay_limits_total)."""

    FRAME = "frame"  # an upstream SSE frame past max_frame_bytes
    BODY = "body"  # a plain upstream answer past max_response_bytes
    DURATION = "duration"  # a stream still going after max_stream_s


class RegistryOp(enum.StrEnum):
    """The `op` label of router_registry_errors_total."""

    READ = "read"
    EVENTS = "events"


class BreakerGauge(Protocol):
    @property
    def state(self) -> BreakerState: ...


class WorkerGauges(Protocol):
    """What the view-derived gauges read of one worker (router.upstream.Upstream)."""

    @property
    def record(self) -> WorkerRecord: ...

    @property
    def breaker(self) -> BreakerGauge: ...

    @property
    def in_flight(self) -> int: ...

    @property
    def prefixes(self) -> frozenset[str]: ...


class ViewGauges(Protocol):
    """What the view-derived gauges read of the registry view (router.view.RegistryView)."""

    @property
    def upstreams(self) -> Mapping[str, WorkerGauges]: ...

    def registry_age_s(self) -> float | None: ...


class RequestSeries:
    """The series of one (endpoint, model, stream) triple, pre-bound."""

    __slots__ = (
        "_by_status",
        "_completion_tokens",
        "_prompt_tokens",
        "_requests",
        "chunk_gap",
        "duration",
        "first_byte",
        "retries",
    )

    def __init__(self, metrics: RouterMetrics, route: Route, model: str, stream: bool) -> None:
        flag = "true" if stream else "false"
        self._requests = metrics.requests
        self.duration = metrics.request_duration.labels(model, flag)
        self.first_byte = metrics.time_to_first_byte.labels(model, flag)
        self.chunk_gap = metrics.inter_chunk_gap.labels(model)
        self.retries = metrics.upstream_retries.labels(model)
        self._prompt_tokens = metrics.model_tokens.labels(model, TokenKind.PROMPT)
        self._completion_tokens = metrics.model_tokens.labels(model, TokenKind.COMPLETION)
        # Keyed by status // 100, and CANCELLED for a client that hung up.
        self._by_status: dict[int, Any] = {
            hundreds: metrics.requests.labels(route, model, status_class(hundreds * 100))
            for hundreds in range(1, 6)
        }
        self._by_status[CANCELLED] = metrics.requests.labels(route, model, StatusClass.CANCELLED)

    def finish(self, status: int, duration_s: float) -> None:
        self._by_status[status // 100 if status else CANCELLED].inc()
        self.duration.observe(duration_s)

    def count_tokens(self, prompt_tokens: int, completion_tokens: int) -> None:
        """A metered request's tokens, once, when it has ended (router.access settles them)."""
        self._prompt_tokens.inc(prompt_tokens)
        self._completion_tokens.inc(completion_tokens)


class TokenKind(enum.StrEnum):
    """The `kind` label of the token counters."""

    PROMPT = "prompt"
    COMPLETION = "completion"


class TokenCounters:
    """The series one key's usage adds to (its project's and its own), pre-bound."""

    __slots__ = ("_counters",)

    def __init__(self, metrics: RouterMetrics, project_id: str, key_id: str) -> None:
        self._counters = tuple(
            (family.labels(label, TokenKind.PROMPT), family.labels(label, TokenKind.COMPLETION))
            for family, label in ((metrics.tokens, project_id), (metrics.key_tokens, key_id))
        )

    def add(self, prompt_tokens: int, completion_tokens: int) -> None:
        for prompt, completion in self._counters:
            prompt.inc(prompt_tokens)
            completion.inc(completion_tokens)


class RouterMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "router_requests",
            "Requests answered, by endpoint, model and status class.",
            ["endpoint", "model", "status_class"],
            registry=r,
        )
        self.project_requests = Counter(
            "router_project_requests",
            "Chat completions by project, the endpoint the URL named ('' for none), status class.",
            ["project", "project_endpoint", "status_class"],
            registry=r,
        )
        self.request_duration = Histogram(
            "router_request_duration_seconds",
            "Chat completion time from arrival to the last byte.",
            ["model", "stream"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.time_to_first_byte = Histogram(
            "router_time_to_first_byte_seconds",
            "Time from arrival to the first upstream body chunk (a stream's first event).",
            ["model", "stream"],
            buckets=FIRST_BYTE_BUCKETS,
            registry=r,
        )
        self.inter_chunk_gap = Histogram(
            "router_inter_chunk_gap_seconds",
            "Gap between consecutive upstream chunks of a stream.",
            ["model"],
            buckets=GAP_BUCKETS,
            registry=r,
        )
        self.overhead = Histogram(
            "router_overhead_seconds",
            "Router time from request arrival until the upstream request is sent.",
            buckets=OVERHEAD_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "router_queue_wait_seconds",
            "Time spent waiting for worker capacity in the admission queue.",
            buckets=FIRST_BYTE_BUCKETS,
            registry=r,
        )
        self.queue_length = Gauge(
            "router_queue_length",
            "Requests waiting in this replica's admission queue, by model.",
            ["model"],
            registry=r,
        )
        self.cache_decisions = Counter(
            "router_cache_decisions",
            "Cache-aware choices by model and outcome (hit, hash, diverted, released, none).",
            ["model", "outcome"],
            registry=r,
        )
        self.queue_rejections = Counter(
            "router_queue_rejections",
            "Requests refused by the admission queue: full, or waited too long (timeout).",
            ["reason"],
            registry=r,
        )
        self.relay_limits = Counter(
            "router_relay_limits",
            "Relays cut by a bound: an upstream frame or plain answer too big, a stream too long.",
            ["limit"],
            registry=r,
        )
        self.breaker_transitions = Counter(
            "router_breaker_transitions",
            "Circuit breaker changes per worker: open (put aside), closed (taken back).",
            ["worker", "state"],
            registry=r,
        )
        self.upstream_errors = Counter(
            "router_upstream_errors",
            "Upstream failures by worker and kind (connect, busy, status, timeout, broken).",
            ["worker", "kind"],
            registry=r,
        )
        self.upstream_retries = Counter(
            "router_upstream_retries",
            "Attempts on another worker after a failure before the first byte.",
            ["model"],
            registry=r,
        )
        self.cancellations = Counter(
            "router_cancellations",
            "Requests whose client hung up, closing the upstream request.",
            ["phase"],
            registry=r,
        )
        self.rejections = Counter(
            "router_rejections",
            "Requests refused before reaching a worker, by reason.",
            ["reason"],
            registry=r,
        )
        self.registry_errors = Counter(
            "router_registry_errors",
            "Failed registry operations (read, events, decode).",
            ["op"],
            registry=r,
        )
        self.registry_invalid_records = Counter(
            "router_registry_invalid_records",
            "Registry records (read) and events (events) skipped as invalid.",
            ["source"],
            registry=r,
        )
        self.tokens = Counter(
            "router_tokens",
            "Tokens of keyed requests by project and kind (prompt, completion), as metered.",
            ["project", "kind"],
            registry=r,
        )
        self.key_tokens = Counter(
            "router_key_tokens",
            "Tokens of keyed requests by key id and kind (prompt, completion), as metered.",
            ["key_id", "kind"],
            registry=r,
        )
        self.model_tokens = Counter(
            "router_model_tokens",
            "Tokens of keyed requests by model and kind (prompt, completion), as metered.",
            ["model", "kind"],
            registry=r,
        )
        self.build_info = Info("router_build", "What this router replica runs.", registry=r)
        self.build_info.info(
            {
                "version": version_of(DISTRIBUTION),
                "python": platform.python_version(),
                "aiohttp": version_of("aiohttp"),
            }
        )
        self.settle_errors = Counter(
            "router_settle_errors",
            "Request ends whose usage could not be settled in Redis (charge, counters, slot).",
            registry=r,
        )
        self._token_counters: dict[tuple[str, str], TokenCounters] = {}
        self._project_counters: dict[tuple[str, str, int], Any] = {}
        self._series: dict[tuple[Route, str, bool], RequestSeries] = {}
        self._view_collector: _ViewCollector | None = None

    def series(self, route: Route, model: str, stream: bool) -> RequestSeries:
        """The series for a model label already bounded by the caller (see model_label)."""
        key = (route, model, stream)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = RequestSeries(self, route, model, stream)
        return series

    def count_project_request(self, project: str, endpoint: str, status: int) -> None:
        """One relayed request of `project` (ids from Redis records, never from input), its
        child bound on first use: the hot path does a dict lookup, not a label resolution."""
        key = (project, endpoint, status // 100 if status else CANCELLED)
        counter = self._project_counters.get(key)
        if counter is None:
            labels = (project, endpoint, status_class(status))
            counter = self._project_counters[key] = self.project_requests.labels(*labels)
        counter.inc()

    def token_counters(self, project_id: str, key_id: str) -> TokenCounters:
        """The token counters of one key (ids from its Redis record, never from input)."""
        key = (project_id, key_id)
        counters = self._token_counters.get(key)
        if counters is None:
            counters = self._token_counters[key] = TokenCounters(self, project_id, key_id)
        return counters

    def chat_series(self, model: str, stream: bool) -> RequestSeries:
        return self.series(Route.CHAT_COMPLETIONS, model, stream)

    def watch_view(self, view: ViewGauges) -> None:
        """Export the view-derived gauges (registry size, staleness, in-flight per worker)."""
        self._view_collector = _ViewCollector(view)
        self.registry.register(self._view_collector)

    def unwatch_view(self) -> None:
        if self._view_collector is not None:
            self.registry.unregister(self._view_collector)
            self._view_collector = None

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _ViewCollector(Collector):
    def __init__(self, view: ViewGauges) -> None:
        self._view = view

    def collect(self) -> Iterator[GaugeMetricFamily]:
        in_flight = GaugeMetricFamily(
            "router_worker_in_flight",
            "This replica's open requests per worker.",
            labels=["worker", "model"],
        )
        breaker_open = GaugeMetricFamily(
            "router_worker_breaker_open",
            "1 while this replica's breaker for the worker is open or probing, else 0.",
            labels=["worker", "model"],
        )
        prefixes = GaugeMetricFamily(
            "router_worker_prefixes",
            "Prefixes this replica believes the worker's KV cache holds (its last record's).",
            labels=["worker", "model"],
        )
        counts: dict[tuple[str, str], int] = {}
        for worker_id, upstream in self._view.upstreams.items():
            record = upstream.record
            in_flight.add_metric([worker_id, record.model], upstream.in_flight)
            prefixes.add_metric([worker_id, record.model], len(upstream.prefixes))
            closed = upstream.breaker.state is BreakerState.CLOSED
            breaker_open.add_metric([worker_id, record.model], 0 if closed else 1)
            key = (record.model, record.state.value)
            counts[key] = counts.get(key, 0) + 1
        workers = GaugeMetricFamily(
            "router_registry_workers",
            "Workers in this replica's registry view, by model and state.",
            labels=["model", "state"],
        )
        for (model, state), n in sorted(counts.items()):
            workers.add_metric([model, state], n)
        age = self._view.registry_age_s()
        staleness = GaugeMetricFamily(
            "router_registry_staleness_seconds",
            "Seconds since the last successful full registry read (+Inf before the first).",
            value=math.inf if age is None else age,
        )
        yield in_flight
        yield prefixes
        yield breaker_open
        yield workers
        yield staleness
