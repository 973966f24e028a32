"""Steady client load for the fault tests, and a strict judge of every answer.

The requests go through the benchmarks' load generator and chat reader (benchmarks.loadgen,
benchmarks.client); this module judges what each exchange was:

    ok      200 and the whole answer (a stream: every frame, ending in `data: [DONE]`)
    error   a clean OpenAI error: a 4xx/5xx (not 500) JSON error body, or a stream that ends in
            an SSE error event then `data: [DONE]`; `streamed` says whether frames came first
    hang    no end within the client's bound
    dirty   anything else: a 500, a non-OpenAI body, a connection cut without an error event
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from benchmarks.client import Exchange
from benchmarks.loadgen import LoadGenerator, Requests, Sent
from tests.processes import MODEL_ID

CHAT = "/v1/chat/completions"


@dataclass(frozen=True, slots=True)
class Outcome:
    kind: str  # ok | error | hang | dirty
    status: int
    streamed: bool  # the stream had started (frames arrived) before the error
    latency_s: float
    detail: str = ""


def chat_body(*, stream: bool, max_tokens: int, model: str = MODEL_ID) -> bytes:
    return orjson.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": "hello there"}],
            "max_tokens": max_tokens,
            "stream": stream,
        }
    )


def _is_error_body(data: bytes) -> bool:
    try:
        error = orjson.loads(data)["error"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return False
    return isinstance(error, dict) and {"message", "type", "param", "code"} <= set(error)


def judge(done: Exchange) -> Outcome:
    """The outcome of one exchange (see the module docstring)."""

    def outcome(kind: str, streamed: bool = False, detail: str = "") -> Outcome:
        return Outcome(kind, done.status, streamed, done.e2e_s, detail)

    error = done.error
    if error is None:
        return outcome("ok")
    if error == "timeout":
        return outcome("hang")
    kind, _, code = error.partition(":")
    if done.status == 200:
        if kind == "sse_error" and done.done:
            # The stream had started (the router answers only once the worker's first chunk is
            # in), so this failed after the first byte, whatever that chunk held.
            return outcome("error", bool(done.events_before_error), code)
        reasons = {"no_done": "no [DONE] at the end", "bad_json": "a frame that is not JSON"}
        return outcome("dirty", True, reasons.get(error, error))
    if done.status not in (0, 500) and _is_error_body(done.error_body):
        return outcome("error", detail=code)
    sample = done.error_body[:200].decode(errors="replace")
    return outcome("dirty", detail=sample or error)


@dataclass
class Load:
    """`concurrency` clients sending back to back until `stop` is set."""

    url: str
    concurrency: int
    stream: bool = True
    max_tokens: int = 8
    bound_s: float = 15.0
    outcomes: list[Outcome] = field(default_factory=list)

    async def run(self, stop: asyncio.Event) -> None:
        body = chat_body(stream=self.stream, max_tokens=self.max_tokens)
        url = self.url + CHAT
        requests = Requests(url=lambda _: url, body=lambda _: body, stream=self.stream)

        def record(sent: Sent) -> None:
            self.outcomes.append(judge(sent.exchange))

        async with LoadGenerator(pool=0, timeout_s=self.bound_s) as gen:
            await gen.closed(
                requests, self.concurrency, stop=stop, pause_after_error_s=0.05, on_done=record
            )

    def summary(self) -> dict[str, Any]:
        kinds = Counter(o.kind for o in self.outcomes)
        latencies = sorted(o.latency_s for o in self.outcomes) or [0.0]
        errors = [o for o in self.outcomes if o.kind == "error"]
        return {
            "requests": len(self.outcomes),
            "ok": kinds["ok"],
            "clean_errors": kinds["error"],
            "errors_mid_stream": sum(1 for o in errors if o.streamed),
            "errors_before_first_byte": sum(1 for o in errors if not o.streamed),
            "error_codes": dict(Counter(o.detail for o in errors)),
            "hangs": kinds["hang"],
            "dirty": kinds["dirty"],
            "dirty_samples": [o.detail for o in self.outcomes if o.kind == "dirty"][:5],
            "p50_s": round(latencies[len(latencies) // 2], 3),
            "p99_s": round(latencies[int(len(latencies) * 0.99)], 3),
            "max_s": round(latencies[-1], 3),
        }


@contextlib.asynccontextmanager
async def running(load: Load) -> AsyncIterator[Load]:
    """Run `load` for the body of the `async with`; stop it and wait for it after."""
    stop = asyncio.Event()
    task = asyncio.create_task(load.run(stop))
    try:
        yield load
    finally:
        stop.set()
        await asyncio.wait_for(task, load.bound_s + 5)


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`, in Prometheus text."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        series, _, label_text = head.partition("{")
        if series != name:
            continue
        if all(f'{k}="{v}"' in label_text for k, v in labels.items()):
            total += float(value)
    return total


def report(title: str, figures: dict[str, Any]) -> None:
    """The figures a fault test prints (run pytest with -s to see them)."""
    print(f"\n== {title}")
    for key, value in figures.items():
        print(f"   {key}: {value}")
