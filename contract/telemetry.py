"""What the router's and the workers' metrics share, so dashboards can put them side by side."""

from __future__ import annotations

import enum
from importlib import metadata
from typing import Final

# Seconds; covers a fake engine's milliseconds up to a slow CPU model's minutes.
LATENCY_BUCKETS: Final = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300,
)  # fmt: skip


class StatusClass(enum.StrEnum):
    """The `status_class` label: an HTTP status by its hundreds, or a client that hung up."""

    INFO = "1xx"
    OK = "2xx"
    REDIRECT = "3xx"
    CLIENT_ERROR = "4xx"
    SERVER_ERROR = "5xx"
    CANCELLED = "cancelled"


_BY_HUNDREDS: Final = {
    1: StatusClass.INFO,
    2: StatusClass.OK,
    3: StatusClass.REDIRECT,
    4: StatusClass.CLIENT_ERROR,
    5: StatusClass.SERVER_ERROR,
}


def status_class(status: int | None) -> StatusClass:
    """The class of `status`; None or 0 (no answer: the client left) is CANCELLED."""
    if not status:
        return StatusClass.CANCELLED
    return _BY_HUNDREDS.get(status // 100, StatusClass.SERVER_ERROR)


DISTRIBUTION: Final = "xero-router"  # this project's package, as pyproject.toml names it


def version_of(distribution: str) -> str:
    """An installed distribution's version for the build_info metrics; "none" if absent."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "none"
