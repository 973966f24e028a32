"""The fault tests' judge: every exchange is ok, a clean error, a hang, or dirty."""

from __future__ import annotations

import orjson

from benchmarks.client import Exchange

from .load import judge

OPENAI_ERROR = orjson.dumps(
    {"error": {"message": "m", "type": "t", "param": None, "code": "queue_full"}}
)


def exchange(status: int, error: str | None, **kw: object) -> Exchange:
    return Exchange(status, error, 0.001, None, 0.5, 0.0, **kw)  # type: ignore[arg-type]


def test_judge() -> None:
    ok = judge(exchange(200, None, done=True))
    assert (ok.kind, ok.status, ok.latency_s) == ("ok", 200, 0.5)
    mid = judge(exchange(200, "sse_error:engine_error", done=True, events_before_error=2))
    assert (mid.kind, mid.streamed, mid.detail) == ("error", True, "engine_error")
    first = judge(exchange(200, "sse_error:engine_error", done=True, events_before_error=0))
    assert (first.kind, first.streamed) == ("error", False)
    assert judge(exchange(200, "sse_error:x", done=False)).kind == "dirty"  # no [DONE] after
    assert judge(exchange(200, "no_done")).detail == "no [DONE] at the end"
    assert judge(exchange(200, "ClientPayloadError")).kind == "dirty"  # cut mid-stream
    busy = judge(exchange(503, "http_503:queue_full", error_body=OPENAI_ERROR))
    assert (busy.kind, busy.detail) == ("error", "queue_full")
    assert judge(exchange(500, "http_500:queue_full", error_body=OPENAI_ERROR)).kind == "dirty"
    not_openai = judge(exchange(502, "http_502", error_body=b"<html>bad gateway</html>"))
    assert (not_openai.kind, not_openai.detail) == ("dirty", "<html>bad gateway</html>")
    assert judge(exchange(0, "timeout")).kind == "hang"
    assert judge(exchange(0, "ClientConnectorError")).detail == "ClientConnectorError"
