"""The worker's Prometheus metrics, owned by one object with its own registry.

Built in `create_app`, so every app (and every test) starts from zero. Labels are bounded:
`route` is the matched route's pattern, `status_class` is 2xx/4xx/5xx or "cancelled". No series
carries the model: a worker serves one, and the scrape adds `model` (and `worker`) to all of them.

Read at scrape time, never per token: running and waiting (SlotQueue), `worker_slots` (its size;
running is the slots busy), and `worker_kv_cells_used` / `worker_kv_cells` for an engine that
reports its KV cache (KvCells). `worker_build_info{version, python, llama_cpp_python, engine} 1`
says what runs.
"""

from __future__ import annotations

import platform
from collections.abc import Iterator
from typing import Protocol, runtime_checkable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from contract.telemetry import DISTRIBUTION, LATENCY_BUCKETS, status_class, version_of
from worker.slots import SlotQueue

SPEED_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)

CONTENT_TYPE = CONTENT_TYPE_LATEST


@runtime_checkable
class KvCells(Protocol):
    """An engine that can tell how full its KV cache is, cheaply, from any thread."""

    def kv_cells(self) -> tuple[int, int] | None:
        """(cells in use, cells in all); None before the model is loaded."""
        ...


class WorkerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "worker_http_requests",
            "HTTP requests answered, by route and status class.",
            ["route", "status_class"],
            registry=r,
        )
        self.running = Gauge("worker_requests_running", "Generations running now.", registry=r)
        self.waiting = Gauge("worker_requests_waiting", "Requests queued for a slot.", registry=r)
        self.rejected = Counter(
            "worker_requests_rejected",
            "Requests refused by admission (queue full or draining).",
            registry=r,
        )
        self.prompt_tokens = Counter("worker_prompt_tokens", "Prompt tokens processed.", registry=r)
        self.completion_tokens = Counter(
            "worker_completion_tokens", "Completion tokens generated.", registry=r
        )
        # Their sum is worker_prompt_tokens (of generations); reuse ratio = cached / that sum.
        self.prompt_tokens_evaluated = Counter(
            "worker_prompt_tokens_evaluated",
            "Prompt tokens of generations that the engine evaluated.",
            registry=r,
        )
        self.prompt_tokens_cached = Counter(
            "worker_prompt_tokens_cached",
            "Prompt tokens of generations reused from the engine's KV cache, not evaluated.",
            registry=r,
        )
        self.tokens_per_second = Histogram(
            "worker_generation_tokens_per_second",
            "Per-request decode speed: tokens after the first over the time after the first.",
            buckets=SPEED_BUCKETS,
            registry=r,
        )
        self.queue_wait = self._seconds(
            "worker_queue_wait_seconds", "Time from arrival to holding a slot."
        )
        self.prompt_seconds = self._seconds(
            "worker_time_to_first_token_seconds",
            "Prompt time: from holding a slot to the engine's first output.",
        )
        self.generation_seconds = self._seconds(
            "worker_generation_seconds",
            "Generation time: from the first output to the end of generation.",
        )
        self.model_load_seconds = Gauge(
            "worker_model_load_seconds", "How long the model took to load.", registry=r
        )
        self.engine_errors = Counter(
            "worker_engine_errors", "Generations that failed inside the engine.", registry=r
        )
        self.slots = Gauge("worker_slots", "Generation slots (running: the busy ones).", registry=r)
        self.build_info = Info("worker_build", "What this worker runs.", registry=r)
        self._describe(engine="")

    def _seconds(self, name: str, documentation: str) -> Histogram:
        return Histogram(name, documentation, buckets=LATENCY_BUCKETS, registry=self.registry)

    def _describe(self, *, engine: str) -> None:
        self.build_info.info(
            {
                "version": version_of(DISTRIBUTION),
                "python": platform.python_version(),
                "llama_cpp_python": version_of("llama_cpp_python"),
                "engine": engine,
            }
        )

    def track_load(self, slots: SlotQueue) -> None:
        """Read running/waiting at scrape time, so the gauges are never stale."""
        self.running.set_function(lambda: slots.running)
        self.waiting.set_function(lambda: slots.waiting)
        self.slots.set(slots.slots)

    def track_engine(self, engine: object, kind: str) -> None:
        """Name the engine (`kind`: llama, batched, fake) in build_info, and export its KV
        cache use at scrape time if it reports it."""
        self._describe(engine=kind)
        if isinstance(engine, KvCells):
            self.registry.register(_KvCollector(engine))

    def observe_request(self, route: str, status: int | None) -> None:
        self.requests.labels(route, status_class(status)).inc()

    def observe_generation(
        self,
        *,
        prompt_tokens: int,
        completion_tokens: int,
        prompt_s: float,
        generation_s: float,
        cached_tokens: int = 0,
    ) -> None:
        self.prompt_tokens.inc(prompt_tokens)
        self.prompt_tokens_evaluated.inc(prompt_tokens - cached_tokens)
        self.prompt_tokens_cached.inc(cached_tokens)
        self.completion_tokens.inc(completion_tokens)
        self.prompt_seconds.observe(prompt_s)
        self.generation_seconds.observe(generation_s)
        if completion_tokens > 1 and generation_s > 0:
            self.tokens_per_second.observe((completion_tokens - 1) / generation_s)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _KvCollector(Collector):
    def __init__(self, engine: KvCells) -> None:
        self._engine = engine

    def collect(self) -> Iterator[GaugeMetricFamily]:
        cells = self._engine.kv_cells()
        if cells is None:
            return
        used, total = cells
        yield GaugeMetricFamily(
            "worker_kv_cells_used",
            "KV cache cells holding tokens: running streams and the prompt caches kept.",
            value=used,
        )
        yield GaugeMetricFamily("worker_kv_cells", "KV cache cells in all.", value=total)
