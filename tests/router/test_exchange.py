"""The exchange the handler hands the relay: what it asks of the worker, set once."""

from __future__ import annotations

import pytest

from contract.sse import usage_trailer
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


def test_a_meter_charges_nothing_until_a_worker_answers() -> None:
    meter = TokenMeter(prompt_estimate=25)
    assert (meter.prompt_tokens, meter.completion_tokens, meter.exact) == (0, 0, False)
    meter.answered("7")  # the worker's X-Prompt-Tokens
    assert meter.prompt_tokens == 7
    for missing in (None, "", "-3", "many"):  # absent or not a count: the body's estimate
        meter.answered(missing)
        assert meter.prompt_tokens == 25


def test_exact_usage_replaces_the_counts() -> None:
    meter = TokenMeter(prompt_estimate=25)
    meter.answered(None)
    meter.completion_tokens = 9
    bad_usages: list[object] = [None, [], {"completion_tokens": 1}, {"prompt_tokens": "x"}]
    for bad in bad_usages:
        assert not meter.take_usage(bad)
    assert (meter.total_tokens, meter.exact) == (34, False)
    meter.take_trailer(usage_trailer({"prompt_tokens": 3, "completion_tokens": 4}))
    assert (meter.prompt_tokens, meter.completion_tokens, meter.exact) == (3, 4, True)
    meter.take_trailer(b": usage {bad\n\n")  # ignored
    assert meter.total_tokens == 7
    assert meter.take_usage({"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11})
    assert meter.total_tokens == 11
    assert meter.take_usage({"prompt_tokens": 8, "total_tokens": 8})  # an embedding's usage
    assert (meter.prompt_tokens, meter.completion_tokens) == (8, 0)


def test_it_holds_nothing_else() -> None:
    with pytest.raises(AttributeError):
        exchange(None).extra = 1  # type: ignore[attr-defined]
