"""Drive a workload against a target at one load level, or several (a sweep).

A `Load` is either closed-loop (`concurrency` clients, each sending its next request when the
last one finished) or open-loop (requests arrive at `request_rate` per second with gamma
inter-arrivals, see benchmarks.arrivals, optionally capped at `max_concurrency` in flight; a
request that waits for the cap is sent late, and its lateness is reported as send lag). A level
stops after `num_requests` or `duration_s`, whichever comes first; requests in flight at the
deadline are finished and counted. `warmup_requests` are sent first (closed loop), not recorded.

Latency of every request is measured from when it was actually sent. The level's duration runs
from the first send to the last byte of the last response.
"""

from __future__ import annotations

import importlib
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from benchmarks.arrivals import arrival_offsets
from benchmarks.client import Target, record
from benchmarks.loadgen import LoadGenerator, OnDone, Requests, Run, Sent
from benchmarks.metrics import RequestRecord, RunSummary, Slo, summarize
from benchmarks.workload import RequestInput, Workload


@dataclass(frozen=True, slots=True)
class Load:
    concurrency: int | None = None  # closed loop
    request_rate: float | None = None  # open loop, requests/s; inf: all at once
    burstiness: float = 1.0
    max_concurrency: int | None = None  # open loop only: cap on requests in flight
    num_requests: int | None = None
    duration_s: float | None = None
    warmup_requests: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if (self.concurrency is None) == (self.request_rate is None):
            raise ValueError("give exactly one of concurrency (closed loop) and request_rate")
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}")
        if self.request_rate is not None and not self.request_rate > 0:
            raise ValueError(f"request rate must be > 0, got {self.request_rate}")
        if not (self.burstiness > 0 and math.isfinite(self.burstiness)):
            raise ValueError(f"burstiness must be a finite number > 0, got {self.burstiness}")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ValueError(f"max concurrency must be >= 1, got {self.max_concurrency}")
        if self.num_requests is None and self.duration_s is None:
            raise ValueError("give num_requests or duration_s (or both) so the run is bounded")
        if self.num_requests is not None and self.num_requests < 1:
            raise ValueError(f"num_requests must be >= 1, got {self.num_requests}")
        if self.duration_s is not None and not (self.duration_s > 0):
            raise ValueError(f"duration_s must be > 0, got {self.duration_s}")
        if self.request_rate == math.inf and self.num_requests is None:
            raise ValueError("an infinite request rate needs num_requests")
        if self.warmup_requests < 0:
            raise ValueError(f"warmup_requests must be >= 0, got {self.warmup_requests}")

    @property
    def closed(self) -> bool:
        return self.concurrency is not None

    @property
    def value(self) -> float:
        """The level's position on a sweep's x axis: concurrency, or request rate."""
        if self.concurrency is not None:
            return float(self.concurrency)
        assert self.request_rate is not None
        return self.request_rate

    @property
    def label(self) -> str:
        if self.concurrency is not None:
            return f"concurrency {self.concurrency}"
        rate = "inf" if self.request_rate == math.inf else f"{self.request_rate:g}"
        cap = "" if self.max_concurrency is None else f", max {self.max_concurrency}"
        return f"rate {rate}/s{cap}"

    def describe(self) -> dict[str, Any]:
        """vLLM's keys: request_rate ("inf" when infinite), burstiness, max_concurrency."""
        return {
            "mode": "closed" if self.closed else "open",
            "concurrency": self.concurrency,
            "request_rate": None
            if self.request_rate is None
            else ("inf" if math.isinf(self.request_rate) else self.request_rate),
            "burstiness": None if self.closed else self.burstiness,
            "max_concurrency": self.concurrency if self.closed else self.max_concurrency,
            "num_prompts": self.num_requests,
            "duration_limit_s": self.duration_s,
            "warmup_requests": self.warmup_requests,
            "seed": self.seed,
        }


class Progress(Protocol):
    def update(self, n: int = 1) -> object: ...

    def close(self) -> None: ...


class _NoProgress:
    def update(self, n: int = 1) -> None:
        return None

    def close(self) -> None:
        return None


def progress_bar(enabled: bool, total: int | None, description: str) -> Progress:
    """A tqdm bar on stderr when enabled, stderr is a terminal and tqdm is installed."""
    if not enabled or not sys.stderr.isatty():
        return _NoProgress()
    try:
        tqdm = importlib.import_module("tqdm")  # optional: the `bench` extra
    except ImportError:
        return _NoProgress()
    bar: Progress = tqdm.tqdm(total=total, desc=description, unit="req", dynamic_ncols=True)
    return bar


@dataclass(frozen=True, slots=True)
class LevelResult:
    load: Load
    records: tuple[RequestRecord, ...]  # by index
    duration_s: float
    started: str  # ISO date, UTC
    loadavg: tuple[tuple[float, ...], tuple[float, ...]]  # 1/5/15 min at start and end

    def summary(self, slo: Slo, percentiles: Sequence[float]) -> dict[str, Any]:
        figures = summarize(self.records, RunSummary(self.duration_s, slo, tuple(percentiles)))
        return {
            "label": self.load.label,
            **self.load.describe(),
            "date": self.started,
            "loadavg_1m_start": self.loadavg[0][0],
            "loadavg_1m_end": self.loadavg[1][0],
            **figures,
        }


class Runner:
    """Drives a workload against a target, one level at a time, on one load generator
    (connections are reused across levels)."""

    def __init__(self, target: Target, workload: Workload, progress: bool = True) -> None:
        self.target = target
        self.workload = workload
        self.progress = progress
        self._gen = LoadGenerator(pool=0, timeout_s=target.timeout_s)
        self._inputs: dict[int, RequestInput] = {}  # sent, not yet recorded
        self._requests = Requests(
            url=target.url, body=self._body, stream=target.stream, headers=target.request_headers()
        )

    async def __aenter__(self) -> Runner:
        await self._gen.__aenter__()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._gen.__aexit__(*exc_info)

    async def run(self, load: Load) -> LevelResult:
        if load.warmup_requests:
            width = load.concurrency or load.max_concurrency or 1
            count = load.warmup_requests
            # Warm-up requests use negative indexes: other prompts than the measured ones.
            await self._gen.closed(self._requests, min(width, count), first=-count, count=count)
            self._inputs.clear()
        loadavg_start = os.getloadavg()
        started = datetime.now(UTC).isoformat(timespec="seconds")
        offsets = None if load.closed else _offsets(load)
        total = load.num_requests if offsets is None else len(offsets)
        bar = progress_bar(self.progress, total, load.label)
        try:
            run = await self._drive(load, offsets, lambda _: bar.update(1))
        finally:
            bar.close()
        records = sorted((self._record(s, run.start) for s in run.sent), key=lambda r: r.index)
        return LevelResult(
            load, tuple(records), run.wall_s, started, (loadavg_start, os.getloadavg())
        )

    async def _drive(self, load: Load, offsets: Sequence[float] | None, on_done: OnDone) -> Run:
        if offsets is not None:
            return await self._gen.open(
                self._requests, offsets, max_concurrency=load.max_concurrency, on_done=on_done
            )
        assert load.concurrency is not None
        return await self._gen.closed(
            self._requests,
            load.concurrency,
            count=load.num_requests,
            duration_s=load.duration_s,
            on_done=on_done,
        )

    def _body(self, index: int) -> bytes:
        request = self.workload.get(index)
        self._inputs[index] = request
        return self.target.body(request)

    def _record(self, sent: Sent, run_start: float) -> RequestRecord:
        request = self._inputs.pop(sent.index)
        url = self.target.url(sent.index)
        stream = self.target.stream
        return record(sent.exchange, sent.index, url, run_start, sent.scheduled_s, request,
                      stream=stream)  # fmt: skip


def _offsets(load: Load) -> list[float]:
    return arrival_offsets(
        load.request_rate or math.inf,
        load.burstiness,
        load.seed,
        load.num_requests,
        load.duration_s,
    )
