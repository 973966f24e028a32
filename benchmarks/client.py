"""One OpenAI chat-completions request, timed: the client side of every harness run.

`Target` says where and how (base URLs, model, key, streaming, extra body fields); `send` sends
one request on a shared aiohttp session and returns its `RequestRecord`. It never raises for
HTTP, protocol or connection failures: they become the record's `error`:

- `http_<status>:<code>`: a non-200 answer; `<code>` is the OpenAI error body's `code` (else its
  `type`), omitted when the body has neither,
- `sse_error:<code>`: an error event inside a 200 stream,
- `no_done`: the stream ended without `data: [DONE]`; `bad_json`: an unparsable event or body,
- `timeout`: the per-request timeout passed; otherwise the aiohttp exception's class name.
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


@dataclass(slots=True)
class _Stream:
    """What reading one SSE stream found."""

    ttft_s: float | None = None
    last_content_s: float | None = None
    gaps: list[float] = field(default_factory=list)
    content_events: int = 0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    done: bool = False
    error: str | None = None


async def send(
    session: aiohttp.ClientSession,
    target: Target,
    index: int,
    request: RequestInput,
    headers: Mapping[str, str],
    run_start: float,
    scheduled_s: float | None = None,
) -> RequestRecord:
    """Send request `index` and time it from just before it is written."""
    url = target.url(index)
    body = target.body(request)
    t0 = time.perf_counter()
    ttfb: float | None = None
    status = 0
    found = _Stream()
    try:
        async with session.post(url, data=body, headers=headers) as resp:
            ttfb = time.perf_counter() - t0
            status = resp.status
            if status != 200:
                found.error = await _http_error(resp)
            elif target.stream:
                await _read_stream(resp, t0, found)
            else:
                await _read_body(resp, t0, found)
    except TimeoutError:
        found.error = "timeout"
    except aiohttp.ClientError as exc:
        found.error = type(exc).__name__
    e2e = time.perf_counter() - t0
    if found.error is None and target.stream and not found.done:
        found.error = "no_done"
    usage = found.completion_tokens is not None
    counted = found.content_events if target.stream else None  # a body is one "event"
    return RequestRecord(
        index=index,
        url=url,
        start_s=t0 - run_start,
        scheduled_s=scheduled_s,
        status=status,
        ok=found.error is None,
        error=found.error,
        ttfb_s=ttfb,
        ttft_s=found.ttft_s,
        e2e_s=e2e,
        itl_s=tuple(found.gaps),
        content_events=found.content_events,
        input_tokens=found.prompt_tokens,
        output_tokens=found.completion_tokens if usage else counted,
        usage_reported=usage,
        prompt_words=request.prompt_words,
        max_tokens=request.max_tokens,
    )


async def _http_error(resp: aiohttp.ClientResponse) -> str:
    raw = await resp.content.read(ERROR_BODY_LIMIT)
    code: object = None
    try:
        error = orjson.loads(raw).get("error")
        if isinstance(error, dict):
            code = error.get("code") or error.get("type")
    except (orjson.JSONDecodeError, AttributeError):
        pass
    return f"http_{resp.status}:{code}" if isinstance(code, str) and code else f"http_{resp.status}"


async def _read_stream(resp: aiohttp.ClientResponse, t0: float, found: _Stream) -> None:
    async for line in resp.content:
        if not line.startswith(b"data:"):
            continue
        now = time.perf_counter() - t0
        payload = line[5:].strip()
        if payload == b"[DONE]":
            found.done = True
            continue
        try:
            event = orjson.loads(payload)
        except orjson.JSONDecodeError:
            found.error = found.error or "bad_json"
            continue
        if not isinstance(event, dict):
            found.error = found.error or "bad_json"
            continue
        if "error" in event:
            found.error = found.error or f"sse_error:{_error_code(event['error'])}"
            continue
        _take_usage(event.get("usage"), found)
        if _content(event):
            found.content_events += 1
            if found.ttft_s is None:
                found.ttft_s = now
            elif found.last_content_s is not None:
                found.gaps.append(now - found.last_content_s)
            found.last_content_s = now


async def _read_body(resp: aiohttp.ClientResponse, t0: float, found: _Stream) -> None:
    raw = await resp.read()
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


def _take_usage(usage: object, found: _Stream) -> None:
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
