"""contract.logs: the JSON and text formats, and when the per-request line is on."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import orjson
import pytest

from contract.logs import (
    JsonFormatter,
    LogFormat,
    Outcome,
    TextFormatter,
    configure,
    log_request,
)

REQUESTS = "test.requests"


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.getLogger(REQUESTS).setLevel(logging.NOTSET)


def _record(**extra: object) -> logging.LogRecord:
    record = logging.LogRecord("router.x", logging.WARNING, __file__, 1, "hello %s", ("you",), None)
    record.__dict__.update(extra)
    return record


def test_json_has_the_standard_fields_and_the_extras() -> None:
    line = JsonFormatter().format(_record(request_id="abc", status=200))
    assert "\n" not in line
    data = orjson.loads(line)
    assert data["level"] == "WARNING"
    assert data["logger"] == "router.x"
    assert data["message"] == "hello you"
    assert data["request_id"] == "abc"
    assert data["status"] == 200
    assert data["time"].endswith("Z")


def test_json_keeps_a_traceback_on_one_line() -> None:
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        import sys

        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "oops", None, sys.exc_info())
    line = JsonFormatter().format(record)
    assert "\n" not in line
    assert "ValueError" in orjson.loads(line)["exception"]


def test_text_appends_the_extras() -> None:
    text = TextFormatter().format(_record(outcome=Outcome.CUT_OFF.value))
    assert text.endswith("router.x: hello you outcome=cut_off")


@pytest.mark.parametrize(
    ("level", "log_format", "on"),
    [
        ("INFO", LogFormat.TEXT, False),  # a terminal's default: as quiet as before
        ("DEBUG", LogFormat.TEXT, True),
        ("INFO", LogFormat.JSON, True),
        ("WARNING", LogFormat.JSON, False),
    ],
)
@pytest.mark.usefixtures("restore_logging")
def test_the_request_line_is_on_with_json_or_debug(
    level: str, log_format: LogFormat, on: bool
) -> None:
    stream = io.StringIO()
    configure(level, log_format, REQUESTS, stream)
    requests = logging.getLogger(REQUESTS)
    assert requests.isEnabledFor(logging.INFO) is on
    log_request(requests, request_id="r1", outcome=Outcome.OK.value)
    written = stream.getvalue()
    assert ("r1" in written) is on
    if on and log_format is LogFormat.JSON:
        assert orjson.loads(written)["request_id"] == "r1"
