"""The worker's metrics: own registry, shared buckets and status classes, scrape-time load."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from contract.telemetry import LATENCY_BUCKETS
from worker.metrics import WorkerMetrics
from worker.slots import SlotQueue


def samples(metrics: WorkerMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.render().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_each_object_starts_from_zero() -> None:
    first, second = WorkerMetrics(), WorkerMetrics()
    first.observe_request("/health", 200)
    assert samples(first)["worker_http_requests_total", (("route", "/health"),
                                                        ("status_class", "2xx"))] == 1  # fmt: skip
    assert not any(name == "worker_http_requests_total" for name, _ in samples(second))


def test_status_classes_and_cancelled() -> None:
    metrics = WorkerMetrics()
    for status in (200, 201, 404, 503, None):
        metrics.observe_request("/v1/chat/completions", status)
    by_class = {
        dict(labels)["status_class"]: value
        for (name, labels), value in samples(metrics).items()
        if name == "worker_http_requests_total"
    }
    assert by_class == {"2xx": 2, "4xx": 1, "5xx": 1, "cancelled": 1}


def test_time_histograms_use_the_shared_latency_buckets() -> None:
    metrics = WorkerMetrics()
    for histogram in ("worker_queue_wait_seconds", "worker_time_to_first_token_seconds",
                      "worker_generation_seconds"):  # fmt: skip
        bounds = sorted(
            float(dict(labels)["le"])
            for (name, labels), _ in samples(metrics).items()
            if name == histogram + "_bucket"
        )
        assert bounds == [*map(float, LATENCY_BUCKETS), float("inf")], histogram


def test_a_generation_counts_tokens_times_and_speed() -> None:
    metrics = WorkerMetrics()
    metrics.observe_generation(prompt_tokens=7, completion_tokens=11, prompt_s=0.2, generation_s=2)
    metrics.observe_generation(prompt_tokens=3, completion_tokens=1, prompt_s=0.1, generation_s=0)
    seen = samples(metrics)
    assert seen["worker_prompt_tokens_total", ()] == 10
    assert seen["worker_completion_tokens_total", ()] == 12
    assert seen["worker_time_to_first_token_seconds_count", ()] == 2
    # Speed needs two tokens and some time: only the first generation, at 10 tokens in 2 s.
    assert seen["worker_generation_tokens_per_second_count", ()] == 1
    assert seen["worker_generation_tokens_per_second_sum", ()] == 5


async def test_running_and_waiting_are_read_at_scrape_time() -> None:
    metrics = WorkerMetrics()
    queue = SlotQueue(slots=1, max_queue=1)
    metrics.track_load(queue)
    assert samples(metrics)["worker_requests_running", ()] == 0
    async with queue.slot():
        assert samples(metrics)["worker_requests_running", ()] == 1
    assert samples(metrics)["worker_requests_running", ()] == 0
    assert samples(metrics)["worker_requests_waiting", ()] == 0
