"""A small closed-loop load generator for OpenAI chat completions.

`concurrency` client coroutines each send one request, read the whole response, then send the
next, until `requests` have been issued or `duration_s` has passed, whichever comes first. Request
i goes to `urls[i % len(urls)]` (round robin when several are given). One `LoadGenerator` owns
one aiohttp `ClientSession` whose pool is sized to its concurrency, so connections are reused
across runs; the request body is serialised once per run.

Per request it records (all from just before the request is written):

- `ttfb_s`: response status line and headers received (time to first byte),
- `ttfc_s`: streaming only, the first SSE event carrying non-empty `delta.content`
  (time to first content chunk, i.e. time to first token as a client sees it),
- `e2e_s`: the last byte read,
- `status` (0 when no response came: connection error or timeout) and `ok`: 200, and for
  streams a final `data: [DONE]` with no error event before it.

Run it as a separate process (for example pinned to its own core) with
`python -m benchmarks.loadgen --url URL --model M --concurrency N --requests N [--stream] --json`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import Counter
from collections.abc import Coroutine, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import aiohttp
import orjson

from benchmarks.metrics import percentile as percentile  # re-exported

DEFAULT_PROMPT = "Say something short."

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class LoadSpec:
    """One run: where, what, how much. At least one of `requests` and `duration_s` is set."""

    urls: tuple[str, ...]  # full chat-completions URLs
    model: str
    concurrency: int
    requests: int | None = None
    duration_s: float | None = None
    stream: bool = False
    max_tokens: int | None = 8
    prompt: str = DEFAULT_PROMPT
    headers: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if not self.urls:
            raise ValueError("LoadSpec needs at least one URL")
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}")
        if self.requests is None and self.duration_s is None:
            raise ValueError("set requests or duration_s (or both) so the run is bounded")
        if self.requests is not None and self.requests < 0:
            raise ValueError(f"requests must be >= 0, got {self.requests}")
        if self.duration_s is not None and not self.duration_s > 0:
            raise ValueError(f"duration_s must be > 0, got {self.duration_s}")

    def body(self) -> bytes:
        payload: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": "user", "content": self.prompt}],
            "stream": self.stream,
        }
        if self.max_tokens is not None:
            payload["max_tokens"] = self.max_tokens
        return orjson.dumps(payload)


@dataclass(frozen=True, slots=True)
class RequestTiming:
    status: int  # HTTP status; 0 when no response came
    ok: bool
    ttfb_s: float | None  # None when no response came
    ttfc_s: float | None  # streaming only; None when no content event came
    e2e_s: float
    chunks: int = 0  # SSE data events before [DONE] (0 for plain requests)
    error: str | None = None  # exception class name, "sse_error" or "no_done"


def describe(values: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/mean/min/max of seconds, reported in milliseconds."""
    if not values:
        return {}
    return {
        "p50_ms": percentile(values, 50) * 1e3,
        "p90_ms": percentile(values, 90) * 1e3,
        "p99_ms": percentile(values, 99) * 1e3,
        "mean_ms": sum(values) / len(values) * 1e3,
        "min_ms": min(values) * 1e3,
        "max_ms": max(values) * 1e3,
    }


@dataclass(frozen=True, slots=True)
class LoadResult:
    spec: LoadSpec
    timings: tuple[RequestTiming, ...]
    wall_s: float

    @property
    def ok_count(self) -> int:
        return sum(1 for t in self.timings if t.ok)

    @property
    def rps(self) -> float:
        """Successful requests per second of wall time."""
        return self.ok_count / self.wall_s if self.wall_s > 0 else 0.0

    def values(self, name: str, ok_only: bool = True) -> list[float]:
        """One timing field ("e2e_s", "ttfb_s", "ttfc_s") over the run, Nones left out."""
        out: list[float] = []
        for t in self.timings:
            if ok_only and not t.ok:
                continue
            value = getattr(t, name)
            if value is not None:
                out.append(value)
        return out

    def summary(self) -> dict[str, Any]:
        statuses = Counter(str(t.status) for t in self.timings)
        errors = Counter(t.error for t in self.timings if t.error is not None)
        out: dict[str, Any] = {
            "requests": len(self.timings),
            "ok": self.ok_count,
            "statuses": dict(sorted(statuses.items())),
            "errors": dict(sorted(errors.items())),
            "wall_s": self.wall_s,
            "rps": self.rps,
            "e2e": describe(self.values("e2e_s")),
            "ttfb": describe(self.values("ttfb_s")),
        }
        if self.spec.stream:
            out["ttfc"] = describe(self.values("ttfc_s"))
        return out


def merge(results: Iterable[LoadResult]) -> list[RequestTiming]:
    """All timings of several runs (e.g. the rounds of one arm), in order."""
    return [t for r in results for t in r.timings]


@dataclass(slots=True)
class _Run:
    """Mutable state shared by the client coroutines of one run (single event loop, no lock)."""

    spec: LoadSpec
    body: bytes
    headers: dict[str, str]
    deadline: float | None
    issued: int = 0
    timings: list[RequestTiming] = field(default_factory=list)

    def next_url(self) -> str | None:
        if self.spec.requests is not None and self.issued >= self.spec.requests:
            return None
        if self.deadline is not None and time.perf_counter() >= self.deadline:
            return None
        url = self.spec.urls[self.issued % len(self.spec.urls)]
        self.issued += 1
        return url


class LoadGenerator:
    """Owns the client session; `run()` may be called many times, one run at a time."""

    def __init__(self, concurrency: int, timeout_s: float = 30.0) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> LoadGenerator:
        connector = aiohttp.TCPConnector(
            limit=self.concurrency, limit_per_host=self.concurrency, keepalive_timeout=120
        )
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=self.timeout_s)
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def run(self, spec: LoadSpec) -> LoadResult:
        if spec.concurrency > self.concurrency:
            raise ValueError(
                f"spec concurrency {spec.concurrency} exceeds the pool size {self.concurrency}"
            )
        start = time.perf_counter()
        state = _Run(
            spec=spec,
            body=spec.body(),
            headers={"Content-Type": "application/json", **dict(spec.headers)},
            deadline=None if spec.duration_s is None else start + spec.duration_s,
        )
        async with asyncio.TaskGroup() as group:
            for _ in range(spec.concurrency):
                group.create_task(self._client(state))
        return LoadResult(
            spec=spec, timings=tuple(state.timings), wall_s=time.perf_counter() - start
        )

    async def _client(self, state: _Run) -> None:
        while (url := state.next_url()) is not None:
            state.timings.append(
                await self.request(url, state.body, state.headers, state.spec.stream)
            )

    async def request(
        self, url: str, body: bytes, headers: dict[str, str], stream: bool
    ) -> RequestTiming:
        """Send one request and time it; never raises for HTTP or connection failures."""
        if self._session is None:
            raise RuntimeError("LoadGenerator used outside 'async with'")
        t0 = time.perf_counter()
        ttfb: float | None = None
        try:
            async with self._session.post(url, data=body, headers=headers) as resp:
                ttfb = time.perf_counter() - t0
                if stream and resp.status == 200:
                    return await _read_stream(resp, t0, ttfb)
                await resp.read()
                return RequestTiming(
                    status=resp.status,
                    ok=resp.status == 200,
                    ttfb_s=ttfb,
                    ttfc_s=None,
                    e2e_s=time.perf_counter() - t0,
                )
        except (aiohttp.ClientError, TimeoutError) as exc:
            return RequestTiming(
                status=0,
                ok=False,
                ttfb_s=ttfb,
                ttfc_s=None,
                e2e_s=time.perf_counter() - t0,
                error=type(exc).__name__,
            )


async def _read_stream(resp: aiohttp.ClientResponse, t0: float, ttfb: float) -> RequestTiming:
    ttfc: float | None = None
    chunks = 0
    done = False
    error: str | None = None
    async for line in resp.content:
        if not line.startswith(b"data:"):
            continue
        payload = line[5:].strip()
        if payload == b"[DONE]":
            done = True
            continue
        chunks += 1
        try:
            event = orjson.loads(payload)
        except orjson.JSONDecodeError:
            error = "sse_bad_json"
            continue
        if not isinstance(event, dict) or "error" in event:
            error = "sse_error"
        elif ttfc is None and _has_content(event):
            ttfc = time.perf_counter() - t0
    e2e = time.perf_counter() - t0
    if error is None and not done:
        error = "no_done"
    return RequestTiming(
        status=resp.status,
        ok=error is None,
        ttfb_s=ttfb,
        ttfc_s=ttfc,
        e2e_s=e2e,
        chunks=chunks,
        error=error,
    )


def _has_content(event: dict[str, Any]) -> bool:
    choices = event.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return False
    delta = choices[0].get("delta")
    return isinstance(delta, dict) and bool(delta.get("content"))


async def run_load(spec: LoadSpec, timeout_s: float = 30.0) -> LoadResult:
    """One run with a session of its own (connections are opened inside the measured run)."""
    async with LoadGenerator(spec.concurrency, timeout_s) as gen:
        return await gen.run(spec)


def run_in_new_loop(coro: Coroutine[Any, Any, T]) -> T:
    """asyncio.run with uvloop when it is installed (as the router and worker use)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.loadgen", description="Closed-loop OpenAI chat load."
    )
    p.add_argument("--url", action="append", required=True, help="chat URL; repeat for RR")
    p.add_argument("--model", required=True)
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--requests", type=int, default=None)
    p.add_argument("--duration-s", type=float, default=None)
    p.add_argument("--warmup-requests", type=int, default=0, help="sent first, not recorded")
    p.add_argument("--stream", action="store_true")
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--timeout-s", type=float, default=30.0)
    p.add_argument("--json", action="store_true", help="print the summary as one JSON line")
    args = p.parse_args(argv)
    if args.requests is None and args.duration_s is None:
        p.error("give --requests or --duration-s")
    return args


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    spec = LoadSpec(
        urls=tuple(args.url),
        model=args.model,
        concurrency=args.concurrency,
        requests=args.requests,
        duration_s=args.duration_s,
        stream=args.stream,
        max_tokens=args.max_tokens,
    )
    async with LoadGenerator(spec.concurrency, args.timeout_s) as gen:
        if args.warmup_requests > 0:
            await gen.run(replace(spec, requests=args.warmup_requests, duration_s=None))
        result = await gen.run(spec)
    return result.summary()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    summary = run_in_new_loop(_main(args))
    if args.json:
        sys.stdout.write(orjson.dumps(summary).decode() + "\n")
    else:
        sys.stdout.write(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0 if summary["ok"] == summary["requests"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
