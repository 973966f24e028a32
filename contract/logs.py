"""Log formats both sides share: `--log-format text|json`, and the one line per request.

Text (the default, for a terminal) is today's `time LEVEL logger: message`, any extra fields
appended as `key=value`. JSON is one object per line for every record: time, level, logger,
message, then the record's extra fields, so a log store can search by request id.

The per-request line (`log_request`) goes to a logger of its own ("<side>.requests"). At INFO in
text format that logger is set to WARNING, so the line costs one `isEnabledFor` check per request
and the terminal sees what it saw before; JSON format, or DEBUG, turns it on.
"""

from __future__ import annotations

import enum
import logging
import sys
import time
from typing import Any, Final, TextIO

import orjson

TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
REQUEST_LINE: Final = "request"  # the message of every per-request line
REQUEST_ID_HEADER: Final = "X-Request-Id"  # the router's id for a request, sent to the worker
# Attributes every LogRecord has: what is not among them came in through `extra=`.
_STANDARD: Final = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys() | {"message", "asctime"}
)


class LogFormat(enum.StrEnum):
    TEXT = "text"
    JSON = "json"


class Outcome(enum.StrEnum):
    """How a request ended, as its log line says."""

    OK = "ok"
    CANCELLED = "cancelled"  # the client hung up
    FAILED_OVER = "failed_over"  # answered, after another worker failed to
    CUT_OFF = "cut_off"  # the stream was ended early: client stopped reading, or a relay bound
    ERROR = "error"  # an error status, or an error event mid-stream


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (orjson escapes any newline in a message)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": _iso(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update(_extras(record))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


class TextFormatter(logging.Formatter):
    """The plain format, with a record's extra fields appended as key=value."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extras = _extras(record)
        if not extras:
            return text
        return text + " " + " ".join(f"{k}={v}" for k, v in extras.items())


def _iso(created: float) -> str:
    whole = int(created)
    millis = int((created - whole) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{millis:03d}Z"


def configure(
    level: str, log_format: LogFormat, request_logger: str | None, stream: TextIO | None = None
) -> None:
    """Set up the root handler (the CLIs only); `request_logger` is the side's request log
    (None: a process that serves no requests)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format is LogFormat.JSON else TextFormatter())
    logging.basicConfig(level=level, handlers=[handler], force=True)
    if request_logger is None:
        return
    quiet = log_format is LogFormat.TEXT and logging.getLevelName(level) > logging.DEBUG
    logging.getLogger(request_logger).setLevel(logging.WARNING if quiet else logging.NOTSET)


def log_request(logger: logging.Logger, **fields: object) -> None:
    """The request's line: call only `if logger.isEnabledFor(logging.INFO)`."""
    logger.info(REQUEST_LINE, extra=fields)
