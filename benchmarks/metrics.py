"""Per-request records and the summary of a run, with the key names of vLLM's `bench serve`.

All times in a `RequestRecord` are seconds measured with `time.perf_counter()` from just before
the request is written (`start_s` is relative to the start of the run). Definitions (also in
benchmarks/README.md):

- TTFB: response status line and headers received.
- TTFT: the first SSE event whose `delta.content` is non-empty (a role-only first delta does not
  count); for a non-streamed request there is none.
- ITL: every gap between two successive content events of one request; pooled over requests.
- E2E (`e2el` in key names): the last byte of the response (after `data: [DONE]`).
- TPOT: per request, (E2E - TTFT) / (output tokens - 1); only for requests with >= 2 output
  tokens.
- Output tokens: `usage.completion_tokens` when the server reports usage (we ask with
  `stream_options.include_usage`), else the number of content events.

Percentiles interpolate linearly between closest ranks, as numpy's default (and vLLM) does.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

DEFAULT_PERCENTILES: tuple[float, ...] = (50.0, 90.0, 95.0, 99.0)
SLO_KEYS = ("ttft_ms", "tpot_ms", "e2e_ms")


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), q in [0, 100]; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """What one request did. Times in seconds; None where the phase never happened."""

    index: int  # position in the run's request sequence
    url: str
    start_s: float  # when it was sent, from the start of the run
    scheduled_s: float | None  # when the arrival process wanted it sent (open loop only)
    status: int  # HTTP status; 0 when no response came
    ok: bool
    error: str | None  # e.g. "http_429:rate_limit_exceeded", "ClientConnectorError", "no_done"
    ttfb_s: float | None
    ttft_s: float | None
    e2e_s: float
    itl_s: tuple[float, ...] = ()  # gaps between successive content events
    content_events: int = 0
    input_tokens: int | None = None  # usage.prompt_tokens
    output_tokens: int | None = None  # usage.completion_tokens, else content events
    usage_reported: bool = False
    prompt_words: int | None = None  # what the workload asked for (synthetic prompts)
    max_tokens: int | None = None

    @property
    def tpot_s(self) -> float | None:
        return tpot(self.e2e_s, self.ttft_s, self.output_tokens)

    @property
    def send_lag_s(self) -> float | None:
        """How late the client sent it against the arrival schedule (open loop only)."""
        return None if self.scheduled_s is None else max(0.0, self.start_s - self.scheduled_s)

    def to_json(self) -> dict[str, Any]:
        """One line of the per-request JSONL, in milliseconds."""
        return {
            "index": self.index,
            "url": self.url,
            "start_ms": self.start_s * 1e3,
            "scheduled_ms": _ms(self.scheduled_s),
            "status": self.status,
            "ok": self.ok,
            "error": self.error,
            "ttfb_ms": _ms(self.ttfb_s),
            "ttft_ms": _ms(self.ttft_s),
            "tpot_ms": _ms(self.tpot_s),
            "e2e_ms": self.e2e_s * 1e3,
            "itl_ms": [g * 1e3 for g in self.itl_s],
            "content_events": self.content_events,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "usage_reported": self.usage_reported,
            "prompt_words": self.prompt_words,
            "max_tokens": self.max_tokens,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RequestRecord:
        """The inverse of `to_json` (used to merge the files of several client processes)."""
        return cls(
            index=int(data["index"]),
            url=str(data["url"]),
            start_s=float(data["start_ms"]) / 1e3,
            scheduled_s=_s(data.get("scheduled_ms")),
            status=int(data["status"]),
            ok=bool(data["ok"]),
            error=data.get("error"),
            ttfb_s=_s(data.get("ttfb_ms")),
            ttft_s=_s(data.get("ttft_ms")),
            e2e_s=float(data["e2e_ms"]) / 1e3,
            itl_s=tuple(float(g) / 1e3 for g in data.get("itl_ms", ())),
            content_events=int(data.get("content_events", 0)),
            input_tokens=data.get("input_tokens"),
            output_tokens=data.get("output_tokens"),
            usage_reported=bool(data.get("usage_reported", False)),
            prompt_words=data.get("prompt_words"),
            max_tokens=data.get("max_tokens"),
        )


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1e3


def _s(ms: float | None) -> float | None:
    return None if ms is None else float(ms) / 1e3


def tpot(e2e_s: float, ttft_s: float | None, output_tokens: int | None) -> float | None:
    """Time per output token after the first: (E2E - TTFT) / (tokens - 1); None below 2 tokens
    or without a TTFT."""
    if ttft_s is None or output_tokens is None or output_tokens < 2:
        return None
    return (e2e_s - ttft_s) / (output_tokens - 1)


@dataclass(frozen=True, slots=True)
class Slo:
    """Service-level objectives in milliseconds; a request is "good" when it meets every one set.

    A TPOT objective does not apply to requests with fewer than 2 output tokens (no TPOT)."""

    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2e_ms: float | None = None

    @property
    def empty(self) -> bool:
        return self.ttft_ms is None and self.tpot_ms is None and self.e2e_ms is None

    @classmethod
    def parse(cls, items: Iterable[str]) -> Slo:
        """From `key=value` strings: ttft_ms=500, tpot_ms=50, e2e_ms=2000."""
        values: dict[str, float] = {}
        for item in items:
            key, sep, raw = item.partition("=")
            key = key.strip()
            if not sep or key not in SLO_KEYS:
                raise ValueError(f"SLO {item!r}: expected KEY=MS with KEY one of {SLO_KEYS}")
            try:
                value = float(raw)
            except ValueError:
                raise ValueError(f"SLO {item!r}: {raw!r} is not a number") from None
            if not value > 0 or math.isinf(value):
                raise ValueError(f"SLO {item!r}: expected a finite value > 0")
            values[key] = value
        return cls(**values)

    def met(self, record: RequestRecord) -> bool:
        if not record.ok:
            return False
        if self.ttft_ms is not None and (
            record.ttft_s is None or record.ttft_s * 1e3 > self.ttft_ms
        ):
            return False
        tpot_s = record.tpot_s
        if self.tpot_ms is not None and tpot_s is not None and tpot_s * 1e3 > self.tpot_ms:
            return False
        return self.e2e_ms is None or record.e2e_s * 1e3 <= self.e2e_ms

    def to_json(self) -> dict[str, float]:
        return {k: v for k in SLO_KEYS if (v := getattr(self, k)) is not None}


def describe(
    name: str, values_s: Sequence[float], percentiles: Sequence[float] = DEFAULT_PERCENTILES
) -> dict[str, float]:
    """mean/median/std/min/max and the percentiles of `values_s`, as `{stat}_{name}_ms` keys
    (vLLM's names: mean_ttft_ms, median_ttft_ms, p99_ttft_ms, ...). NaN when there are none."""
    ms = [v * 1e3 for v in values_s]
    out = {
        f"mean_{name}_ms": statistics.fmean(ms) if ms else math.nan,
        f"median_{name}_ms": statistics.median(ms) if ms else math.nan,
        f"std_{name}_ms": statistics.pstdev(ms) if ms else math.nan,
        f"min_{name}_ms": min(ms) if ms else math.nan,
        f"max_{name}_ms": max(ms) if ms else math.nan,
    }
    for q in percentiles:
        out[f"p{_pct_label(q)}_{name}_ms"] = percentile(ms, q)
    return out


def _pct_label(q: float) -> str:
    return str(int(q)) if float(q).is_integer() else str(q)


def error_counts(records: Iterable[RequestRecord]) -> dict[str, int]:
    counts = Counter(r.error or f"http_{r.status}" for r in records if not r.ok)
    return dict(sorted(counts.items()))


def peak_concurrency(records: Iterable[RequestRecord]) -> int:
    """Most requests in flight at once, from their start and end times."""
    events: list[tuple[float, int]] = []
    for r in records:
        events.append((r.start_s, 1))
        events.append((r.start_s + r.e2e_s, -1))
    events.sort(key=lambda e: (e[0], e[1]))  # an end before a start at the same instant
    peak = current = 0
    for _, delta in events:
        current += delta
        peak = max(peak, current)
    return peak


@dataclass(frozen=True, slots=True)
class RunSummary:
    """Everything `summarize` needs besides the records."""

    duration_s: float  # first send to last response byte
    slo: Slo = field(default_factory=Slo)
    percentiles: tuple[float, ...] = DEFAULT_PERCENTILES


def summarize(records: Sequence[RequestRecord], run: RunSummary) -> dict[str, Any]:
    """The run's figures, flat, with vLLM `bench serve` key names where one exists.

    Token totals and latency figures count successful requests only; throughputs divide by the
    run's duration."""
    ok = [r for r in records if r.ok]
    duration = run.duration_s
    total_in = sum(r.input_tokens or 0 for r in ok)
    total_out = sum(r.output_tokens or 0 for r in ok)
    per_s = (lambda x: x / duration) if duration > 0 else (lambda x: math.nan)
    out: dict[str, Any] = {
        "duration": duration,
        "num_requests": len(records),
        "completed": len(ok),
        "failed": len(records) - len(ok),
        "total_input_tokens": total_in,
        "total_output_tokens": total_out,
        "usage_reported": sum(1 for r in ok if r.usage_reported),
        "request_throughput": per_s(len(ok)),
        "output_throughput": per_s(total_out),
        "total_token_throughput": per_s(total_in + total_out),
        "max_concurrent_requests": peak_concurrency(records),
    }
    if not run.slo.empty:
        good = sum(1 for r in ok if run.slo.met(r))
        out["slo"] = run.slo.to_json()
        out["good_requests"] = good
        out["request_goodput"] = per_s(good)
    p = run.percentiles
    out.update(describe("ttft", [r.ttft_s for r in ok if r.ttft_s is not None], p))
    out.update(describe("tpot", [t for r in ok if (t := r.tpot_s) is not None], p))
    out.update(describe("itl", [g for r in ok for g in r.itl_s], p))
    out.update(describe("e2el", [r.e2e_s for r in ok], p))
    out.update(describe("ttfb", [r.ttfb_s for r in ok if r.ttfb_s is not None], p))
    lags = [lag for r in records if (lag := r.send_lag_s) is not None]
    if lags:
        out["p99_send_lag_ms"] = percentile(lags, 99) * 1e3
        out["max_send_lag_ms"] = max(lags) * 1e3
    out["errors"] = error_counts(records)
    return out
