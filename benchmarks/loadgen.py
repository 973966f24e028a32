"""The load generator: closed- and open-loop drivers over one aiohttp session.

`LoadGenerator` owns the session (its pool sized by the caller; connections are reused across
runs) and sends every request with benchmarks.client's `post_chat`, the one chat request and
SSE reader. Its callers: the harness (benchmarks.runner: workloads, levels, sweeps), the
router_overhead scenario, and the fault tests (tests/integration/faults/load.py).

- `closed`: `concurrency` clients each send one request, read the whole answer, then send the
  next, until `count` requests were issued, `duration_s` passed or `stop` is set (whichever comes
  first); requests in flight then are finished and counted.
- `open`: request i is sent at `offsets[i]` seconds from the start (benchmarks.arrivals),
  optionally with at most `max_concurrency` in flight; one held back by the cap is sent late.

`LoadSpec` / `run_load` / `python -m benchmarks.loadgen` are the lean fixed-body closed loop
router_overhead runs (in its own process when it measures requests/s):
`python -m benchmarks.loadgen --url URL --model M --concurrency N --requests N [--stream] --json`.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import aiohttp
import orjson

from benchmarks.client import Exchange, post_chat
from benchmarks.metrics import percentile as percentile  # re-exported

DEFAULT_PROMPT = "Say something short."
JSON_HEADERS: Mapping[str, str] = {"Content-Type": "application/json"}

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Requests:
    """What a run sends: request `index` goes to `url(index)` with `body(index)`."""

    url: Callable[[int], str]
    body: Callable[[int], bytes]
    stream: bool
    headers: Mapping[str, str] = field(default_factory=lambda: dict(JSON_HEADERS))


@dataclass(frozen=True, slots=True)
class Sent:
    index: int
    scheduled_s: float | None  # open loop: when the arrival process wanted it sent
    exchange: Exchange


@dataclass(frozen=True, slots=True)
class Run:
    start: float  # time.perf_counter() at the start of the run
    sent: list[Sent]  # in completion order
    wall_s: float  # from the start to the last byte of the last answer


OnDone = Callable[[Sent], object]


class LoadGenerator:
    """Owns the client session; runs may follow each other, one at a time."""

    def __init__(self, pool: int = 0, timeout_s: float = 30.0) -> None:
        """`pool`: connections at most (0: no limit); `timeout_s`: per request, in total."""
        if pool < 0:
            raise ValueError(f"pool must be >= 0, got {pool}")
        self.pool = pool
        self.timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> LoadGenerator:
        connector = aiohttp.TCPConnector(
            limit=self.pool, limit_per_host=self.pool, keepalive_timeout=120
        )
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=self.timeout_s)
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(self, requests: Requests, index: int) -> Exchange:
        if self._session is None:
            raise RuntimeError("LoadGenerator used outside 'async with'")
        url, body = requests.url(index), requests.body(index)
        return await post_chat(self._session, url, body, requests.headers, stream=requests.stream)

    async def closed(
        self,
        requests: Requests,
        concurrency: int,
        *,
        first: int = 0,
        count: int | None = None,
        duration_s: float | None = None,
        stop: asyncio.Event | None = None,
        pause_after_error_s: float = 0.0,
        on_done: OnDone | None = None,
    ) -> Run:
        """Closed loop over indexes first, first + 1, ...; see the module docstring."""
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        sent: list[Sent] = []
        indexes = iter(range(first, first + count)) if count is not None else itertools.count(first)
        start = time.perf_counter()
        deadline = None if duration_s is None else start + duration_s

        async def client() -> None:
            while not (stop is not None and stop.is_set()) and (
                deadline is None or time.perf_counter() < deadline
            ):
                index = next(indexes, None)
                if index is None:
                    return
                item = Sent(index, None, await self.send(requests, index))
                sent.append(item)
                if on_done is not None:
                    on_done(item)
                if pause_after_error_s and not item.exchange.ok:
                    await asyncio.sleep(pause_after_error_s)  # as a polite client would

        async with asyncio.TaskGroup() as group:
            for _ in range(concurrency):
                group.create_task(client())
        return Run(start, sent, time.perf_counter() - start)

    async def run(self, spec: LoadSpec) -> LoadResult:
        """One fixed-body closed-loop run (the pool should be at least `spec.concurrency`)."""
        run = await self.closed(
            spec.to_requests(), spec.concurrency, count=spec.requests, duration_s=spec.duration_s
        )
        return LoadResult(spec, tuple(s.exchange for s in run.sent), run.wall_s)

    async def open(
        self,
        requests: Requests,
        offsets: Sequence[float],
        *,
        max_concurrency: int | None = None,
        on_done: OnDone | None = None,
    ) -> Run:
        """Open loop: request i at offsets[i] from the start."""
        sent: list[Sent] = []
        cap = None if max_concurrency is None else asyncio.Semaphore(max_concurrency)
        start = time.perf_counter()

        async def one(index: int, offset: float) -> None:
            if cap is None:
                done = await self.send(requests, index)
            else:
                async with cap:
                    done = await self.send(requests, index)
            item = Sent(index, offset, done)
            sent.append(item)
            if on_done is not None:
                on_done(item)

        async with asyncio.TaskGroup() as group:
            for index, offset in enumerate(offsets):
                delay = start + offset - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                group.create_task(one(index, offset))
        return Run(start, sent, time.perf_counter() - start)


# -- the fixed-body closed loop ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LoadSpec:
    """One run: where, what, how much. At least one of `requests` and `duration_s` is set."""

    urls: tuple[str, ...]  # full chat-completions URLs; request i goes to urls[i % len]
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

    def to_requests(self) -> Requests:
        body = self.body()  # serialised once per run
        urls = self.urls
        return Requests(
            url=lambda i: urls[i % len(urls)],
            body=lambda _: body,
            stream=self.stream,
            headers={**JSON_HEADERS, **dict(self.headers)},
        )


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
    timings: tuple[Exchange, ...]
    wall_s: float

    @property
    def ok_count(self) -> int:
        return sum(1 for t in self.timings if t.ok)

    @property
    def rps(self) -> float:
        """Successful requests per second of wall time."""
        return self.ok_count / self.wall_s if self.wall_s > 0 else 0.0

    def values(self, name: str, ok_only: bool = True) -> list[float]:
        """One timing field ("e2e_s", "ttfb_s", "ttft_s") over the run, Nones left out."""
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
            out["ttfc"] = describe(self.values("ttft_s"))
        return out


def merge(results: Iterable[LoadResult]) -> list[Exchange]:
    """All timings of several runs (e.g. the rounds of one arm), in order."""
    return [t for r in results for t in r.timings]


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
