"""Part 1: the latency the router adds. The same closed-loop load direct to one worker and via
the router to that same worker, in interleaved ABBA rounds."""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import replace
from typing import Any

from benchmarks.cpu import cpu_percent
from benchmarks.loadgen import LoadGenerator, LoadResult, LoadSpec, describe, merge
from benchmarks.metrics import percentile
from benchmarks.router_overhead.params import (
    CHAT_PATH,
    TARGET_ADDED_P50_MS,
    TARGET_ADDED_P99_MS,
    Params,
)
from benchmarks.router_overhead.rps import cpu_snapshot
from benchmarks.stack import Stack

logger = logging.getLogger(__name__)


async def measure_latency(stack: Stack, params: Params) -> list[dict[str, Any]]:
    direct_url = stack.worker_urls[0] + CHAT_PATH
    router_url = stack.router_url + CHAT_PATH
    rows: list[dict[str, Any]] = []
    async with LoadGenerator(max(params.concurrencies)) as gen:
        for stream in (False, True):
            for concurrency in params.concurrencies:
                base = LoadSpec(
                    urls=(direct_url,),
                    model=params.model_id,
                    concurrency=concurrency,
                    requests=params.requests_per_round,
                    stream=stream,
                    max_tokens=params.max_tokens,
                )
                arms = {"direct": base, "router": replace(base, urls=(router_url,))}
                for spec in arms.values():  # open the pool's connections, warm both paths
                    await gen.run(replace(spec, requests=params.warmup_requests))
                runs: dict[str, list[LoadResult]] = {"direct": [], "router": []}
                before, t0 = cpu_snapshot(stack), time.perf_counter()
                for i in range(params.rounds):
                    order = ("direct", "router") if i % 2 == 0 else ("router", "direct")
                    for arm in order:
                        runs[arm].append(await gen.run(arms[arm]))
                row = latency_row(stream, concurrency, runs)
                row["cpu_percent"] = cpu_percent(
                    before, cpu_snapshot(stack), time.perf_counter() - t0
                )
                logger.info("latency %s", _latency_line(row))
                rows.append(row)
    return rows


def latency_row(
    stream: bool, concurrency: int, runs: dict[str, list[LoadResult]]
) -> dict[str, Any]:
    metrics = ["e2e_s", "ttft_s"] if stream else ["e2e_s"]
    row: dict[str, Any] = {
        "mode": "stream" if stream else "plain",
        "concurrency": concurrency,
        "rounds": len(runs["direct"]),
    }
    pooled: dict[str, dict[str, list[float]]] = {}
    for arm, results in runs.items():
        timings = merge(results)
        pooled[arm] = {
            m: [getattr(t, m) for t in timings if t.ok and getattr(t, m) is not None]
            for m in metrics
        }
        row[arm] = {
            "requests": len(timings),
            "ok": sum(1 for t in timings if t.ok),
            "errors": _error_counts(results),
            "rps_mean": statistics.fmean(r.rps for r in results),
            **{_metric_name(m): describe(pooled[arm][m]) for m in metrics},
        }
    added: dict[str, Any] = {}
    for m in metrics:
        name = _metric_name(m)
        direct, router = pooled["direct"][m], pooled["router"][m]
        entry: dict[str, Any] = {}
        for q in (50, 99):
            entry[f"p{q}_ms"] = (percentile(router, q) - percentile(direct, q)) * 1e3
            per_round = [
                percentile(r.values(m), q) - percentile(d.values(m), q)
                for d, r in zip(runs["direct"], runs["router"], strict=True)
            ]
            entry[f"p{q}_ms_median_of_rounds"] = statistics.median(per_round) * 1e3
        entry["meets_target"] = (
            entry["p50_ms"] <= TARGET_ADDED_P50_MS and entry["p99_ms"] <= TARGET_ADDED_P99_MS
        )
        added[name] = entry
    row["added"] = added
    return row


def _metric_name(field_name: str) -> str:
    return {"e2e_s": "e2e", "ttft_s": "ttft", "ttfb_s": "ttfb"}[field_name]


def _error_counts(results: list[LoadResult]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in merge(results):
        if not t.ok:
            key = t.error or f"http_{t.status}"
            counts[key] = counts.get(key, 0) + 1
    return counts


def _latency_line(row: dict[str, Any]) -> str:
    parts = [f"{row['mode']:6s} c={row['concurrency']:<3d}"]
    for name, added in row["added"].items():
        d, r = row["direct"][name], row["router"][name]
        parts.append(
            f"{name}: direct p50 {d['p50_ms']:.3f} p99 {d['p99_ms']:.3f} | router p50 "
            f"{r['p50_ms']:.3f} p99 {r['p99_ms']:.3f} | added p50 {added['p50_ms']:+.3f} "
            f"p99 {added['p99_ms']:+.3f} ms"
        )
    return "  ".join(parts)
