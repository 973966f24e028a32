"""contract.telemetry: the status_class label and the shared latency buckets."""

from __future__ import annotations

import pytest

from contract.telemetry import LATENCY_BUCKETS, StatusClass, status_class


@pytest.mark.parametrize(
    ("status", "label"),
    [
        (None, "cancelled"),
        (0, "cancelled"),
        (100, "1xx"),
        (101, "1xx"),
        (200, "2xx"),
        (204, "2xx"),
        (299, "2xx"),
        (301, "3xx"),
        (400, "4xx"),
        (404, "4xx"),
        (499, "4xx"),
        (500, "5xx"),
        (503, "5xx"),
        (599, "5xx"),
    ],
)
def test_status_class_by_hundreds(status: int | None, label: str) -> None:
    assert status_class(status) == label
    assert isinstance(status_class(status), StatusClass)


@pytest.mark.parametrize("status", [600, 999, 42])
def test_an_out_of_range_status_counts_as_a_server_error(status: int) -> None:
    assert status_class(status) is StatusClass.SERVER_ERROR


def test_labels_are_plain_strings() -> None:
    assert [str(c) for c in StatusClass] == ["1xx", "2xx", "3xx", "4xx", "5xx", "cancelled"]


def test_latency_buckets_are_sorted_distinct_and_positive() -> None:
    assert list(LATENCY_BUCKETS) == sorted(set(LATENCY_BUCKETS))
    assert all(bound > 0 for bound in LATENCY_BUCKETS)
    # From a fake engine's milliseconds to a slow CPU model's minutes.
    assert LATENCY_BUCKETS[0] <= 0.005 and LATENCY_BUCKETS[-1] >= 300
