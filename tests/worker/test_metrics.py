"""The worker's metrics: own registry, shared buckets and status classes, scrape-time load."""

from __future__ import annotations

import platform
from importlib import metadata

import pytest
from prometheus_client.parser import text_string_to_metric_families

from contract.telemetry import LATENCY_BUCKETS, version_of
from contract.wire import Message, SamplingParams
from worker.engine import Finished
from worker.fake_engine import FakeEngine
from worker.llama_engine import LlamaEngine
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


class Cells:
    """An engine's KV report, as KvCells reads it."""

    def __init__(self) -> None:
        self.cells: tuple[int, int] | None = None

    def kv_cells(self) -> tuple[int, int] | None:
        return self.cells


def test_build_info_names_the_versions_and_the_engine() -> None:
    metrics = WorkerMetrics()
    metrics.track_engine(object(), "batched")
    [info] = [dict(labels) for name, labels in samples(metrics) if name == "worker_build_info"]
    assert info == {
        "version": metadata.version("xero-router"),
        "python": platform.python_version(),
        "llama_cpp_python": version_of("llama-cpp-python"),
        "engine": "batched",
    }
    assert version_of("no-such-distribution") == "none"


def test_slots_and_kv_cells_are_read_at_scrape_time() -> None:
    metrics = WorkerMetrics()
    metrics.track_load(SlotQueue(slots=3, max_queue=0))
    engine = Cells()
    metrics.track_engine(engine, "llama")
    seen = samples(metrics)
    assert seen["worker_slots", ()] == 3
    assert ("worker_kv_cells_used", ()) not in seen  # not loaded yet: no figure at all
    engine.cells = (120, 4096)
    seen = samples(metrics)
    assert (seen["worker_kv_cells_used", ()], seen["worker_kv_cells", ()]) == (120, 4096)


def test_an_engine_without_a_kv_report_has_no_kv_series() -> None:
    metrics = WorkerMetrics()
    metrics.track_engine(FakeEngine(ttft_ms=0, tokens_per_s=0, n_ctx=64, slots=1), "fake")
    assert not [name for name, _ in samples(metrics) if name.startswith("worker_kv_")]


@pytest.mark.llama
@pytest.mark.parametrize("kind", ["llama", "batched"])
async def test_real_engines_count_the_cells_their_tokens_hold(kind: str) -> None:
    """After one request the cache holds its prompt and all but the last token generated (kept
    as the slot's prompt cache), out of n_ctx (times the slots, batched)."""
    pytest.importorskip("llama_cpp", reason="needs llama-cpp-python")
    from worker.batched_engine import BatchedLlamaEngine

    from .real_model import real_model_path

    path = real_model_path()
    engine: LlamaEngine | BatchedLlamaEngine
    if kind == "llama":
        engine = LlamaEngine(path, n_ctx=256, n_gpu_layers=0, n_threads=2)
    else:
        engine = BatchedLlamaEngine(path, n_ctx=256, n_threads=2, slots=2, prefill_chunk=16)
    capacity = 256 if kind == "llama" else 512
    assert engine.kv_cells() is None
    await engine.load()
    try:
        assert engine.kv_cells() == (0, capacity)
        prompts: list[int] = []
        completion = 0
        params = SamplingParams(max_tokens=8, temperature=0.0)
        async for item in engine.stream([Message("user", "Hi")], params, prompts.append):
            if isinstance(item, Finished):
                completion = item.completion_tokens
        [prompt] = prompts
        assert completion == 8
        used, total = engine.kv_cells() or (0, 0)
        assert total == capacity
        assert prompt + completion - 1 <= used <= prompt + completion, (prompt, used)
    finally:
        await engine.close()
