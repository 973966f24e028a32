"""Steady client load for the fault tests, and a strict judge of every answer.

Each answer is one of:

    ok      200 and the whole answer (a stream: every frame, ending in `data: [DONE]`)
    error   a clean OpenAI error: a 4xx/5xx (not 500) JSON error body, or a stream that ends in
            an SSE error event then `data: [DONE]`; `streamed` says whether content came first
    hang    no end within the client's bound
    dirty   anything else: a 500, a non-OpenAI body, a connection cut without an error event
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

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


def judge_stream(data: bytes) -> tuple[str, bool, str]:
    """(kind, streamed, detail) of a complete 200 SSE body."""
    frames = [f for f in data.split(b"\n\n") if f]
    if not frames or frames[-1] != b"data: [DONE]":
        return "dirty", bool(frames), "no [DONE] at the end"
    for i, frame in enumerate(frames[:-1]):
        payload = frame.removeprefix(b"data: ")
        if _is_error_body(payload):
            # The stream had started (the router answers only once the worker's first chunk is
            # in), so this failed after the first byte, whatever that chunk held.
            return "error", i > 0, orjson.loads(payload)["error"]["code"] or ""
        try:
            orjson.loads(payload)
        except orjson.JSONDecodeError:
            return "dirty", True, "a frame that is not JSON"
    return "ok", True, ""


async def one_request(
    session: aiohttp.ClientSession, url: str, body: bytes, *, stream: bool, bound_s: float
) -> Outcome:
    started = time.monotonic()

    def done(kind: str, status: int, streamed: bool = False, detail: str = "") -> Outcome:
        return Outcome(kind, status, streamed, time.monotonic() - started, detail)

    try:
        async with (
            asyncio.timeout(bound_s),
            session.post(
                url + CHAT, data=body, headers={"Content-Type": "application/json"}
            ) as resp,
        ):
            data = await resp.read()
            if resp.status == 200:
                if not stream:
                    ok = "choices" in orjson.loads(data)
                    return done("ok" if ok else "dirty", 200)
                kind, streamed, detail = judge_stream(data)
                return done(kind, 200, streamed, detail)
            if resp.status != 500 and _is_error_body(data):
                code = orjson.loads(data)["error"]["code"] or ""
                return done("error", resp.status, detail=str(code))
            return done("dirty", resp.status, detail=data[:200].decode(errors="replace"))
    except TimeoutError:
        return done("hang", 0)
    except (aiohttp.ClientError, OSError) as exc:
        return done("dirty", 0, detail=repr(exc))


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
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def client() -> None:
                while not stop.is_set():
                    outcome = await one_request(
                        session, self.url, body, stream=self.stream, bound_s=self.bound_s
                    )
                    self.outcomes.append(outcome)
                    if outcome.kind != "ok":
                        await asyncio.sleep(0.05)  # as a polite client would

            await asyncio.gather(*(client() for _ in range(self.concurrency)))

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
