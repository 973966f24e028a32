"""The exchange the handler hands the relay: what it asks of the worker, set once."""

from __future__ import annotations

import pytest

from router.exchange import Exchange, TokenMeter
from router.metrics import RouterMetrics


def exchange(meter: TokenMeter | None) -> Exchange:
    return Exchange(
        body=b"{}",
        request_id="req-1",
        model="m",
        series=RouterMetrics().chat_series("m", True),
        arrived=1.0,
        rate_headers={},
        meter=meter,
    )


def test_the_worker_gets_json_and_the_request_id() -> None:
    assert exchange(None).upstream_headers == {
        "Content-Type": "application/json",
        "X-Request-Id": "req-1",
    }


def test_a_meter_asks_the_worker_for_its_usage() -> None:
    meter = TokenMeter()
    metered = exchange(meter)
    assert metered.upstream_headers["X-Usage-Trailer"] == "1"
    assert metered.meter is meter and meter.total_tokens == 0


def test_it_holds_nothing_else() -> None:
    with pytest.raises(AttributeError):
        exchange(None).extra = 1  # type: ignore[attr-defined]
