"""CPU per request of the router's relay path, against the minimal relay floor, and its profile.

Starts redis-server, a mock upstream (benchmarks.router_overhead.mock_upstream) registered as
one worker, and the target: the router (`--auth off`, text logs, no OTLP) or the floor
(benchmarks.router_overhead.floor_relay). Then a short closed loop of chat requests (plain or
streamed), and the target's CPU seconds from procfs before and after: CPU µs per request is a
relative figure that a shared machine disturbs far less than requests/s. With `--profile
cprofile` the router runs under cProfile (slower: use its shares, not its µs) and the top
functions are printed; `--profile py-spy` samples it instead (raw collapsed stacks, summarised
by own time).

    python -m benchmarks.profiles --target router --requests 3000 [--stream] [--profile cprofile]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import pstats
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
from aiohttp import ClientSession, TCPConnector
from redis.asyncio import Redis

from benchmarks import processes
from benchmarks.cpu import cpu_seconds
from benchmarks.router_overhead.mock_upstream import MODEL_ID as MODEL
from contract.registry import WorkerApi, WorkerRecord, WorkerState, now_ms, publish_worker

FRAMES = 8  # content events per mock stream, sent without a pause
MOCK = "benchmarks.router_overhead.mock_upstream"
WORKER_TTL_MS = 10_000
PY_SPY_RATE_HZ = 500


def _body(stream: bool) -> bytes:
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Say hello eight times."},
    ]
    return orjson.dumps({"model": MODEL, "messages": messages, "max_tokens": 8, "stream": stream})


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status", "rb") as f:  # procfs: never blocks on I/O
        for line in f:
            if line.startswith(b"VmRSS:"):
                return int(line.split()[1])
    return 0


@contextlib.asynccontextmanager
async def registered(redis_url: str, upstream_url: str) -> AsyncIterator[None]:
    """The mock upstream in the registry, its heartbeat refreshed every second."""
    redis: Redis[Any] = Redis.from_url(redis_url)
    now = now_ms()
    record = WorkerRecord(
        worker_id="mock-0",
        model=MODEL,
        url=upstream_url,
        state=WorkerState.READY,
        slots=4096,
        running=0,
        waiting=0,
        max_queue=0,
        device="cpu",
        started_ms=now,
        heartbeat_ms=now,
        api=WorkerApi.XERO,
    )

    async def beat() -> None:
        while True:
            await publish_worker(redis, record.with_load(0, 0), WORKER_TTL_MS)
            await asyncio.sleep(1.0)

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await redis.aclose()  # type: ignore[attr-defined]  # types-redis predates it


async def load(url: str, body: bytes, requests: int, concurrency: int) -> int:
    """Send `requests` requests, `concurrency` at a time, reading every answer whole; the
    number that did not answer 200."""
    failed = 0
    remaining = requests
    headers = {"Content-Type": "application/json"}
    async with ClientSession(connector=TCPConnector(limit=0)) as session:

        async def client() -> None:
            nonlocal failed, remaining
            while remaining > 0:
                remaining -= 1
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    failed += response.status != 200

        await asyncio.gather(*(client() for _ in range(concurrency)))
    return failed


def _target(
    args: argparse.Namespace, tmp: Path, redis: processes.RedisServer, upstream: str
) -> processes.Process:
    port = processes.free_port()
    if args.target == "floor":
        floor = "benchmarks.router_overhead.floor_relay"
        argv = [sys.executable, "-m", floor, "--port", str(port), "--upstream", upstream]
    else:
        argv = processes.router_argv(port, redis.url, auth=False, options=["--log-format", "text"])
    if args.profile == "cprofile":
        argv[1:1] = ["-m", "cProfile", "-o", str(tmp / "router.prof")]
    return processes.HttpService(
        name=args.target, args=argv, log_path=tmp / f"{args.target}.log", port=port
    )


def _wait_serving(proc: processes.Process, url: str, body: bytes) -> None:
    def answers() -> bool:
        with contextlib.suppress(OSError):
            return asyncio.run(load(url, body, 1, 1)) == 0
        return False

    proc.wait_ready(answers, 30.0, "a first answer")


async def measure(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    redis = processes.RedisServer.create(tmp)
    redis.start()
    port = processes.free_port()
    upstream = processes.Process(
        "upstream",
        [
            sys.executable,
            "-m",
            "benchmarks.router_overhead.mock_upstream",
            "--port",
            str(port),
            "--chunks",
            str(FRAMES),
            "--chunk-gap-ms",
            "0",
        ],
        tmp / "upstream.log",
        port=port,
    )
    upstream.start()
    procs: list[processes.Process] = [redis, upstream]
    try:
        upstream.wait_ready(
            lambda: processes.http_status(upstream.url + "/health", 1.0) == 200, 30.0, "listen"
        )
        async with registered(redis.url, upstream.url):
            target = _target(args, tmp, redis, upstream.url)
            target.start()
            procs.append(target)
            url = target.url + "/v1/chat/completions"
            body = _body(args.stream)
            await asyncio.to_thread(_wait_serving, target, url, body)
            idle_rss = rss_kib(target.pid)
            await load(url, body, args.warmup, args.concurrency)
            spy = _py_spy(target.pid, tmp) if args.profile == "py-spy" else None
            cpu0, wall0 = cpu_seconds(target.pid), time.perf_counter()
            failed = await load(url, body, args.requests, args.concurrency)
            cpu1, wall1 = cpu_seconds(target.pid), time.perf_counter()
            loaded_rss = rss_kib(target.pid)
            if spy is not None:
                spy.stop()
            target.signal(signal.SIGINT)  # cProfile writes its stats on a clean exit
            await asyncio.to_thread(target.stop, 20.0)
    finally:
        for proc in reversed(procs):
            proc.stop()
    return {
        "target": args.target,
        "stream": args.stream,
        "requests": args.requests,
        "concurrency": args.concurrency,
        "failed": failed,
        "cpu_us_per_request": (cpu1 - cpu0) / args.requests * 1e6,
        "wall_s": wall1 - wall0,
        "rss_idle_mib": idle_rss / 1024,
        "rss_loaded_mib": loaded_rss / 1024,
    }


def _py_spy(pid: int, tmp: Path) -> processes.Process:
    argv = ["py-spy", "record", "--pid", str(pid), "--rate", str(PY_SPY_RATE_HZ)]
    argv += ["--format", "raw", "--nonblocking", "--output", str(tmp / "router.folded")]
    spy = processes.Process("py-spy", argv, tmp / "py-spy.log")
    spy.start()
    time.sleep(1.0)  # attached before the load starts
    return spy


def cprofile_summary(path: Path, top: int) -> str:
    out = io.StringIO()
    stats = pstats.Stats(str(path), stream=out)
    stats.strip_dirs()
    for key in ("tottime", "cumulative"):
        stats.sort_stats(key).print_stats(top)
    return out.getvalue()


def folded_summary(path: Path, top: int) -> str:
    """Own-time shares by leaf frame, and inclusive shares by frame, from py-spy's raw output."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in _lines(path):
        stack, _, count = line.rpartition(" ")
        n = int(count)
        frames = stack.split(";")
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    rows = [f"{total} samples", "own:"]
    rows += [f"  {n / total:6.1%}  {frame}" for frame, n in own.most_common(top)]
    rows.append("inclusive:")
    rows += [f"  {n / total:6.1%}  {frame}" for frame, n in inclusive.most_common(top)]
    return "\n".join(rows)


def _lines(path: Path) -> Iterator[str]:
    with path.open() as f:
        yield from (line.strip() for line in f if line.strip())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profiles", description=__doc__)
    parser.add_argument("--target", choices=("router", "floor"), default="router")
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--profile", choices=("none", "cprofile", "py-spy"), default="none")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--save", type=Path, help="copy the raw profile here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="router-profile-") as name:
        tmp = Path(name)
        result = asyncio.run(measure(args, tmp))
        print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
        raw = tmp / ("router.prof" if args.profile == "cprofile" else "router.folded")
        if args.save is not None and args.profile != "none":
            shutil.copyfile(raw, args.save)
        if args.profile == "cprofile":
            print(cprofile_summary(raw, args.top))
        elif args.profile == "py-spy":
            print(folded_summary(raw, args.top))
    return 0 if result["failed"] == 0 else 1
