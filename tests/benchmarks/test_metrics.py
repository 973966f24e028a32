"""The harness's metric math on hand-made timings: percentiles, TPOT, ITL, goodput, errors."""

from __future__ import annotations

import math

import pytest

from benchmarks.metrics import (
    RequestRecord,
    RunSummary,
    Slo,
    describe,
    error_counts,
    peak_concurrency,
    percentile,
    summarize,
    tpot,
)


def record(
    index: int = 0,
    *,
    start_s: float = 0.0,
    ttft_s: float | None = 0.1,
    e2e_s: float = 0.5,
    itl_s: tuple[float, ...] = (),
    output_tokens: int | None = 5,
    input_tokens: int | None = 10,
    ok: bool = True,
    status: int = 200,
    error: str | None = None,
    scheduled_s: float | None = None,
) -> RequestRecord:
    return RequestRecord(
        index=index,
        url="http://x/v1/chat/completions",
        start_s=start_s,
        scheduled_s=scheduled_s,
        status=status,
        ok=ok,
        error=error,
        ttfb_s=None if ttft_s is None else ttft_s / 2,
        ttft_s=ttft_s,
        e2e_s=e2e_s,
        itl_s=itl_s,
        content_events=len(itl_s) + 1,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        usage_reported=output_tokens is not None,
    )


def test_percentile_interpolates_like_numpy() -> None:
    assert math.isnan(percentile([], 50))
    assert percentile([7.0], 99) == 7.0
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([1.0, 2.0], 50) == 1.5
    values = [float(v) for v in range(1, 11)]  # 1..10
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 10.0
    assert percentile(values, 90) == pytest.approx(9.1)  # rank 8.1
    assert percentile(values, 99) == pytest.approx(9.91)
    assert percentile(values, 25) == pytest.approx(3.25)


def test_describe_names_and_units() -> None:
    stats = describe("ttft", [0.1, 0.2, 0.3, 0.4], (50, 99, 99.9))
    assert stats["mean_ttft_ms"] == pytest.approx(250.0)
    assert stats["median_ttft_ms"] == pytest.approx(250.0)
    assert stats["p50_ttft_ms"] == pytest.approx(250.0)
    assert stats["p99_ttft_ms"] == pytest.approx(397.0)
    assert "p99.9_ttft_ms" in stats
    assert stats["min_ttft_ms"] == pytest.approx(100.0)
    assert stats["max_ttft_ms"] == pytest.approx(400.0)
    assert stats["std_ttft_ms"] == pytest.approx(111.8034, rel=1e-5)
    empty = describe("itl", [])
    assert all(math.isnan(v) for v in empty.values())


def test_tpot() -> None:
    assert tpot(1.0, 0.2, 5) == pytest.approx(0.2)  # (1.0 - 0.2) / 4
    assert tpot(1.0, 0.2, 1) is None  # one token: no time *per output token after the first*
    assert tpot(1.0, None, 5) is None
    assert tpot(1.0, 0.2, None) is None
    assert record(ttft_s=0.1, e2e_s=0.5, output_tokens=5).tpot_s == pytest.approx(0.1)


def test_summary_tpot_is_per_request_and_itl_is_pooled() -> None:
    records = [
        # TPOT (0.5 - 0.1) / 4 = 0.1; gaps of 0.1 x4
        record(0, ttft_s=0.1, e2e_s=0.5, itl_s=(0.1, 0.1, 0.1, 0.1), output_tokens=5),
        # TPOT (1.1 - 0.1) / 2 = 0.5; gaps 0.3 and 0.7
        record(1, ttft_s=0.1, e2e_s=1.1, itl_s=(0.3, 0.7), output_tokens=3),
    ]
    s = summarize(records, RunSummary(duration_s=2.0))
    assert s["mean_tpot_ms"] == pytest.approx(300.0)  # mean of per-request TPOTs
    assert s["median_tpot_ms"] == pytest.approx(300.0)
    # ITL: six pooled gaps, so the long request's gaps weigh by their count
    assert s["mean_itl_ms"] == pytest.approx((0.4 + 1.0) / 6 * 1e3)
    assert s["max_itl_ms"] == pytest.approx(700.0)
    assert s["p50_itl_ms"] == pytest.approx(100.0)
    assert s["mean_e2el_ms"] == pytest.approx(800.0)
    assert s["mean_ttfb_ms"] == pytest.approx(50.0)


def test_summary_counts_throughput_and_errors() -> None:
    records = [
        record(0, output_tokens=4, input_tokens=10),
        record(1, output_tokens=6, input_tokens=20),
        record(2, ok=False, status=429, error="http_429:rate_limit_exceeded", output_tokens=None),
        record(3, ok=False, status=0, error="ClientConnectorError", ttft_s=None),
        record(4, ok=False, status=429, error="http_429:rate_limit_exceeded", output_tokens=None),
    ]
    s = summarize(records, RunSummary(duration_s=2.0))
    assert (s["num_requests"], s["completed"], s["failed"]) == (5, 2, 3)
    assert s["total_input_tokens"] == 30
    assert s["total_output_tokens"] == 10
    assert s["request_throughput"] == pytest.approx(1.0)
    assert s["output_throughput"] == pytest.approx(5.0)
    assert s["total_token_throughput"] == pytest.approx(20.0)
    assert s["errors"] == {"ClientConnectorError": 1, "http_429:rate_limit_exceeded": 2}
    assert "request_goodput" not in s  # no SLO given
    # Latency figures describe successful requests only.
    assert s["mean_e2el_ms"] == pytest.approx(500.0)


def test_error_counts_fall_back_to_status() -> None:
    records = [record(0, ok=False, status=503, error=None), record(1)]
    assert error_counts(records) == {"http_503": 1}


def test_goodput_needs_every_objective() -> None:
    slo = Slo.parse(["ttft_ms=200", "tpot_ms=100", "e2e_ms=1000"])
    assert slo == Slo(ttft_ms=200.0, tpot_ms=100.0, e2e_ms=1000.0)
    good = record(0, ttft_s=0.1, e2e_s=0.5, output_tokens=5)  # TPOT 100 ms: on the bound
    slow_first = record(1, ttft_s=0.3, e2e_s=0.5, output_tokens=5)
    slow_tokens = record(2, ttft_s=0.1, e2e_s=0.9, output_tokens=5)  # TPOT 200 ms
    too_long = record(3, ttft_s=0.1, e2e_s=1.2, output_tokens=100)
    one_token = record(4, ttft_s=0.1, e2e_s=0.15, output_tokens=1)  # TPOT does not apply
    failed = record(5, ok=False, status=500, error="http_500")
    records = [good, slow_first, slow_tokens, too_long, one_token, failed]
    assert [slo.met(r) for r in records] == [True, False, False, False, True, False]
    s = summarize(records, RunSummary(duration_s=4.0, slo=slo))
    assert s["good_requests"] == 2
    assert s["request_goodput"] == pytest.approx(0.5)
    assert s["slo"] == {"ttft_ms": 200.0, "tpot_ms": 100.0, "e2e_ms": 1000.0}
    # A TTFT objective fails requests that have no TTFT (non-streamed).
    assert not Slo(ttft_ms=1e9).met(record(ttft_s=None))


@pytest.mark.parametrize("bad", ["ttft=5", "ttft_ms", "ttft_ms=abc", "ttft_ms=0", "itl_ms=5"])
def test_slo_parse_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        Slo.parse([bad])


def test_peak_concurrency_and_send_lag() -> None:
    records = [
        record(0, start_s=0.0, e2e_s=1.0),
        record(1, start_s=0.5, e2e_s=1.0),
        record(2, start_s=1.0, e2e_s=1.0),  # starts as #0 ends: not overlapping it
        record(3, start_s=3.0, e2e_s=0.1),
    ]
    assert peak_concurrency(records) == 2
    late = record(0, start_s=1.25, scheduled_s=1.0)
    assert late.send_lag_s == pytest.approx(0.25)
    s = summarize([late], RunSummary(duration_s=1.0))
    assert s["max_send_lag_ms"] == pytest.approx(250.0)


def test_record_json_round_trip() -> None:
    original = record(7, start_s=0.25, itl_s=(0.01, 0.02), scheduled_s=0.2)
    again = RequestRecord.from_json(original.to_json())
    assert again.index == 7
    assert again.itl_s == pytest.approx(original.itl_s)
    assert again.e2e_s == pytest.approx(original.e2e_s)
    assert again.scheduled_s == pytest.approx(0.2)
    assert again.tpot_s == pytest.approx(original.tpot_s)
