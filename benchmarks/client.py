"""One OpenAI chat-completions request, timed: the client side of every load this project runs
(the harness, benchmarks.loadgen, the fault tests).

`post_chat` sends one request on a shared aiohttp session, reads the JSON body or the SSE stream
and returns an `Exchange`: status, TTFB, TTFT (first non-empty `delta.content`), the gaps between
content events, E2E (last byte), usage, and an error class. It never raises for HTTP, protocol
or connection failures: they become the exchange's `error`:

- `http_<status>:<code>`: a non-200 answer; `<code>` is the OpenAI error body's `code` (else its
  `type`), omitted when the body has neither,
- `sse_error:<code>`: an error event inside a 200 stream,
- `no_done`: the stream did not end with `data: [DONE]`; `bad_json`: an unparsable event or body,
- `timeout`: the per-request timeout passed; otherwise the aiohttp exception's class name.

`Target` says where and how for the harness (base URLs, model, key, streaming, extra body
fields); `record` turns one of its exchanges into the harness's `RequestRecord`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from benchmarks.metrics import RequestRecord
from benchmarks.workload import RequestInput

CHAT_SUFFIX = "/chat/completions"
ERROR_BODY_LIMIT = 64 * 1024


def chat_url(base_url: str) -> str:
    """The chat-completions URL of an OpenAI base URL, as the `openai` SDK builds it
    (`http://h:p/v1` -> `http://h:p/v1/chat/completions`, path-based
    `http://h/proj_A/ep/v1` likewise). A base URL with no path at all gets `/v1`."""
    base = base_url.rstrip("/")
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"base URL must be http(s)://HOST[:PORT][/PATH], got {base_url!r}")
    if base.endswith(CHAT_SUFFIX):
        return base
    if not parts.path:
        base += "/v1"
    return base + CHAT_SUFFIX


@dataclass(frozen=True, slots=True)
class Target:
    """Where requests go and what every body shares."""

    base_urls: tuple[str, ...]  # request i goes to base_urls[i % len]
    model: str
    api_key: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    stream: bool = True
    include_usage: bool = True  # stream_options.include_usage, for exact token counts
    extra_body: tuple[tuple[str, Any], ...] = ()  # merged last into every body
    timeout_s: float = 300.0
    chat_urls: tuple[str, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.base_urls:
            raise ValueError("give at least one base URL")
        if not self.model:
            raise ValueError("model must not be empty")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")
        object.__setattr__(self, "chat_urls", tuple(chat_url(u) for u in self.base_urls))

    def url(self, index: int) -> str:
        return self.chat_urls[index % len(self.chat_urls)]

    def request_headers(self) -> dict[str, str]:
        out = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            out["Authorization"] = f"Bearer {self.api_key}"
        out.update(self.headers)
        return out

    def body(self, request: RequestInput) -> bytes:
        payload: dict[str, Any] = {"model": self.model, **request.payload()}
        payload["stream"] = self.stream
        if self.stream and self.include_usage:
            payload["stream_options"] = {"include_usage": True}
        payload.update(self.extra_body)
        return orjson.dumps(payload)

    def describe(self) -> dict[str, Any]:
        """For result metadata: never the key itself."""
        return {
            "base_urls": list(self.base_urls),
            "chat_urls": list(self.chat_urls),
            "model": self.model,
            "api_key": "set" if self.api_key else None,
            "stream": self.stream,
            "include_usage": self.include_usage and self.stream,
            "extra_body": dict(self.extra_body),
            "timeout_s": self.timeout_s,
        }


@dataclass(frozen=True, slots=True)
class Exchange:
    """What one request did. Times in seconds from just before it was written; None where the
    phase never happened."""

    status: int  # HTTP status; 0 when no response came
    error: str | None
    ttfb_s: float | None
    ttft_s: float | None  # streams only
    e2e_s: float
    sent_at: float  # time.perf_counter() just before the request was written
    itl_s: tuple[float, ...] = ()  # gaps between successive content events
    events: int = 0  # SSE data events other than [DONE]
    content_events: int = 0  # events with content; a body with content counts as one
    events_before_error: int | None = None  # data events before the first error event
    done: bool = False  # the stream's last event was [DONE]
    prompt_tokens: int | None = None  # usage, when reported
    completion_tokens: int | None = None
    error_body: bytes = b""  # the body of a non-200 answer (up to ERROR_BODY_LIMIT)

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(slots=True)
class _Reading:
    """What reading one response found so far."""

    ttft_s: float | None = None
    last_content_s: float | None = None
    gaps: list[float] = field(default_factory=list)
    events: int = 0
    content_events: int = 0
    events_before_error: int | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    done: bool = False
    error: str | None = None
    error_body: bytes = b""
    end: float | None = None


async def post_chat(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    stream: bool,
) -> Exchange:
    """Send one chat request and read its answer; never raises for HTTP or connection errors."""
    t0 = time.perf_counter()
    ttfb: float | None = None
    status = 0
    found = _Reading()
    try:
        async with session.post(url, data=body, headers=headers) as resp:
            ttfb = time.perf_counter() - t0
            status = resp.status
            if status != 200:
                await _read_error(resp, found)
            elif stream:
                await _read_stream(resp, t0, found)
            else:
                await _read_body(resp, found)
    except TimeoutError:
        found.error = "timeout"
    except aiohttp.ClientError as exc:
        found.error = type(exc).__name__
    e2e = (found.end or time.perf_counter()) - t0
    if found.error is None and stream and not found.done:
        found.error = "no_done"
    return Exchange(
        status=status,
        error=found.error,
        ttfb_s=ttfb,
        ttft_s=found.ttft_s,
        e2e_s=e2e,
        sent_at=t0,
        itl_s=tuple(found.gaps),
        events=found.events,
        content_events=found.content_events,
        events_before_error=found.events_before_error,
        done=found.done,
        prompt_tokens=found.prompt_tokens,
        completion_tokens=found.completion_tokens,
        error_body=found.error_body,
    )


def record(
    done: Exchange,
    index: int,
    url: str,
    run_start: float,
    scheduled_s: float | None,
    request: RequestInput,
    *,
    stream: bool,
) -> RequestRecord:
    usage = done.completion_tokens is not None
    counted = done.content_events if stream else None  # a body is one "event"
    return RequestRecord(
        index=index,
        url=url,
        start_s=done.sent_at - run_start,
        scheduled_s=scheduled_s,
        status=done.status,
        ok=done.ok,
        error=done.error,
        ttfb_s=done.ttfb_s,
        ttft_s=done.ttft_s,
        e2e_s=done.e2e_s,
        itl_s=done.itl_s,
        content_events=done.content_events,
        input_tokens=done.prompt_tokens,
        output_tokens=done.completion_tokens if usage else counted,
        usage_reported=usage,
        prompt_words=request.prompt_words,
        max_tokens=request.max_tokens,
    )


async def _read_error(resp: aiohttp.ClientResponse, found: _Reading) -> None:
    raw = b""
    while len(raw) < ERROR_BODY_LIMIT:
        chunk = await resp.content.read(ERROR_BODY_LIMIT - len(raw))
        if not chunk:
            break
        raw += chunk
    found.end = time.perf_counter()
    found.error_body = raw
    code: object = None
    try:
        error = orjson.loads(raw).get("error")
        if isinstance(error, dict):
            code = error.get("code") or error.get("type")
    except (orjson.JSONDecodeError, AttributeError):
        pass
    ok_code = isinstance(code, str) and code
    found.error = f"http_{resp.status}:{code}" if ok_code else f"http_{resp.status}"


async def _read_stream(resp: aiohttp.ClientResponse, t0: float, found: _Reading) -> None:
    async for line in resp.content:
        if not line.startswith(b"data:"):
            continue
        now = time.perf_counter() - t0
        payload = line[5:].strip()
        if payload == b"[DONE]":
            found.done = True
            continue
        found.done = False  # [DONE] must be the last event
        found.events += 1
        try:
            event = orjson.loads(payload)
        except orjson.JSONDecodeError:
            found.error = found.error or "bad_json"
            continue
        if not isinstance(event, dict):
            found.error = found.error or "bad_json"
        elif "error" in event:
            if found.events_before_error is None:
                found.events_before_error = found.events - 1
            found.error = found.error or f"sse_error:{_error_code(event['error'])}"
        else:
            _take_usage(event.get("usage"), found)
            if _content(event):
                found.content_events += 1
                if found.ttft_s is None:
                    found.ttft_s = now
                elif found.last_content_s is not None:
                    found.gaps.append(now - found.last_content_s)
                found.last_content_s = now


async def _read_body(resp: aiohttp.ClientResponse, found: _Reading) -> None:
    raw = await resp.read()
    found.end = time.perf_counter()
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        found.error = "bad_json"
        return
    if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
        found.error = "bad_json"
        return
    _take_usage(data.get("usage"), found)
    message = data["choices"][0].get("message") if data["choices"] else None
    if isinstance(message, dict) and message.get("content"):
        found.content_events = 1


def _take_usage(usage: object, found: _Reading) -> None:
    if not isinstance(usage, dict):
        return
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if isinstance(prompt, int):
        found.prompt_tokens = prompt
    if isinstance(completion, int):
        found.completion_tokens = completion


def _content(event: dict[str, Any]) -> bool:
    choices = event.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return False
    delta = choices[0].get("delta")
    return isinstance(delta, dict) and bool(delta.get("content"))


def _error_code(error: object) -> str:
    if isinstance(error, dict):
        code = error.get("code") or error.get("type")
        if isinstance(code, str) and code:
            return code
    return "unknown"
