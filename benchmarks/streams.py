"""Bursts of connections and many open streams through one router (issue 14).

    python -m benchmarks.streams [--levels 100,1000,3000] [--processes 1,2] [--max-tokens 40]
                                 [--tokens-per-s 20] [--rps-duration-s 5] [--out DIR] [--smoke]

Stack: redis, two fake workers (`--slots` 2000 each, paced at `--tokens-per-s`), one router
(auth off, default --backlog), a fresh stack per router process count. At each level N clients
(one aiohttp session, no pool limit) open a stream each at the same moment and read it to the
end. Per level: failures by kind (reset, refused, disconnected, timeout, non-200 status, a stream
that ended without [DONE]), the kernel's listen-queue overflows and drops over the level (TcpExt
in /proc/net/netstat: the whole network namespace, so other traffic counts too), time to the
first SSE chunk p50/p99, the router's RSS at the most streams open and the growth per open stream
over its idle RSS, and its CPU time per relayed chunk (all its CPU over the level, accepts and
request handling included, divided by the `data:` lines the clients got). With 2+ process counts,
only the first runs every level; the others run the biggest. Then, unless --rps-duration-s is 0,
non-streamed requests/s of each process count from `benchmarks.loadgen` in its own process.

The clients run in this process, on the same cores: on a 2-core machine they compete with the
router, so the figures are a floor for the router, not its ceiling. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import resource
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from benchmarks.client import chat_url
from benchmarks.cpu import cpu_seconds
from benchmarks.flags import Cli, option
from benchmarks.loadgen import describe
from benchmarks.meta import run_metadata
from benchmarks.report import fmt_errors, fmt_ms, fmt_num
from benchmarks.scenario import header_line, run_scenario, write_report
from benchmarks.stack import Stack, StackConfig

logger = logging.getLogger(__name__)

MODEL = "bench-model"
SAMPLE_S = 0.1
FDS_PER_STREAM = 3  # the client's socket, the router's two (client side, upstream)
NETSTAT = Path("/proc/net/netstat")


@dataclass(frozen=True, slots=True)
class Params:
    levels: tuple[int, ...] = field(
        default=(100, 1000, 3000), metadata=option("streams opened at once, per level")
    )
    processes: tuple[int, ...] = field(
        default=(1, 2), metadata=option("router --processes; the first runs every level")
    )
    max_tokens: int = field(default=40, metadata=option("tokens per stream"))
    tokens_per_s: float = field(default=20.0, metadata=option("fake workers' pace"))
    slots: int = field(default=2000, metadata=option("slots per fake worker"))
    timeout_s: float = field(default=120.0, metadata=option("bound on one stream"))
    rps_duration_s: float = field(
        default=5.0, metadata=option("non-streamed req/s run per process count; 0: skip")
    )
    rps_concurrency: int = field(default=64, metadata=option())

    def __post_init__(self) -> None:
        if not self.levels or not self.processes or min(*self.levels, *self.processes) < 1:
            raise ValueError("levels and processes must be integers >= 1")
        if min(self.max_tokens, self.slots, self.rps_concurrency) < 1:
            raise ValueError("max-tokens, slots and rps-concurrency must be >= 1")
        if not self.tokens_per_s > 0 or not self.timeout_s > 0 or self.rps_duration_s < 0:
            raise ValueError("tokens-per-s and timeout-s must be > 0, rps-duration-s >= 0")


# -- procfs -----------------------------------------------------------------------------------


def children_of(pid: int) -> set[int]:
    """The PIDs whose parent is `pid`."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:  # procfs: never blocks on I/O
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(entry))
    return found


def rss_kib(pids: set[int]) -> int:
    """Resident memory of these processes together (VmRSS), in KiB."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            continue
    return total


def listen_counters() -> dict[str, int]:
    """TcpExt ListenOverflows and ListenDrops of this network namespace so far."""
    lines = NETSTAT.read_text().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=False))
            return {k: int(table.get(k, 0)) for k in ("ListenOverflows", "ListenDrops")}
    return {"ListenOverflows": 0, "ListenDrops": 0}


def raise_fd_limit(needed: int) -> int:
    """Raise this process's RLIMIT_NOFILE to its hard limit (the stack's processes, started
    later, inherit it); the soft limit now, with a warning when below `needed`."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard != resource.RLIM_INFINITY and hard < needed:
        logger.warning("RLIMIT_NOFILE hard limit %d < %d descriptors needed", hard, needed)
    return hard


# -- one level --------------------------------------------------------------------------------


@dataclass(slots=True)
class Tally:
    open: int = 0
    chunks: int = 0
    ttft_s: list[float] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)
    peak_open: int = 0  # exact, counted by the streams
    sampled_open: int = 0  # the most open at an RSS sample, and that sample
    sampled_rss_kib: int = 0


def failure_kind(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "disconnected"
    code = exc.errno if isinstance(exc, OSError) else None
    if code == errno.ECONNREFUSED:
        return "refused"
    if code in (errno.ECONNRESET, errno.EPIPE):
        return "reset"
    return type(exc).__name__


async def one_stream(
    session: aiohttp.ClientSession, url: str, body: bytes, go: asyncio.Event, tally: Tally
) -> None:
    await go.wait()
    t0 = time.perf_counter()
    first = done = False
    try:
        async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
            if r.status != 200:
                tally.failures[f"status {r.status}"] += 1
                return
            tally.open += 1
            tally.peak_open = max(tally.peak_open, tally.open)
            try:
                async for line in r.content:
                    if not line.startswith(b"data:"):
                        continue
                    tally.chunks += 1
                    if not first:
                        first = True
                        tally.ttft_s.append(time.perf_counter() - t0)
                    done = line.startswith(b"data: [DONE]")
            finally:
                tally.open -= 1
        if not done:
            tally.failures["no [DONE]"] += 1
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        tally.failures[failure_kind(exc)] += 1


async def sample(pids: set[int], tally: Tally, stop: asyncio.Event) -> None:
    """Keep the router's RSS at the sample that saw the most streams open."""
    while not stop.is_set():
        if tally.open > tally.sampled_open:
            tally.sampled_open, tally.sampled_rss_kib = tally.open, rss_kib(pids)
        await asyncio.sleep(SAMPLE_S)


async def stream_level(stack: Stack, params: Params, processes: int, level: int) -> dict[str, Any]:
    assert stack.router is not None
    pids = {stack.router.pid, *children_of(stack.router.pid)}
    body = orjson.dumps(
        {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True,
         "max_tokens": params.max_tokens}
    )  # fmt: skip
    tally, go, stop = Tally(), asyncio.Event(), asyncio.Event()
    idle_rss, net0 = rss_kib(pids), listen_counters()
    cpu0, t0 = sum(cpu_seconds(p) for p in pids), time.perf_counter()
    sampler = asyncio.create_task(sample(pids, tally, stop))
    timeout = aiohttp.ClientTimeout(total=params.timeout_s)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        url = chat_url(stack.router_url)
        streams = [one_stream(session, url, body, go, tally) for _ in range(level)]
        tasks = [asyncio.create_task(s) for s in streams]
        await asyncio.sleep(0)  # every task waits at the gate
        go.set()
        await asyncio.gather(*tasks)
    stop.set()
    await sampler
    cpu_s, wall_s = sum(cpu_seconds(p) for p in pids) - cpu0, time.perf_counter() - t0
    net1 = listen_counters()
    grown, sampled = tally.sampled_rss_kib - idle_rss, tally.sampled_open
    row = {
        "processes": processes,
        "streams": level,
        "ok": level - sum(tally.failures.values()),
        "failures": dict(sorted(tally.failures.items())),
        "listen_overflows": net1["ListenOverflows"] - net0["ListenOverflows"],
        "listen_drops": net1["ListenDrops"] - net0["ListenDrops"],
        "ttft": describe(tally.ttft_s),
        "peak_open": tally.peak_open,
        "router_rss_idle_mib": idle_rss / 1024,
        "router_rss_peak_mib": max(idle_rss, tally.sampled_rss_kib) / 1024,
        "rss_sampled_open": sampled,
        "rss_per_open_stream_kib": grown / sampled if sampled else None,
        "chunks": tally.chunks,
        "router_cpu_s": cpu_s,
        "cpu_us_per_chunk": cpu_s / tally.chunks * 1e6 if tally.chunks else None,
        "wall_s": wall_s,
    }
    logger.info("processes %d, %d streams: %s", processes, level, row)
    return row


# -- requests/s -------------------------------------------------------------------------------


async def measure_rps(stack: Stack, params: Params, processes: int) -> dict[str, Any]:
    """Non-streamed requests/s from benchmarks.loadgen in a process of its own."""
    c = params.rps_concurrency
    argv = [
        sys.executable, "-m", "benchmarks.loadgen", "--url", chat_url(stack.router_url),
        "--model", MODEL, "--concurrency", str(c), "--duration-s", f"{params.rps_duration_s:g}",
        "--warmup-requests", str(c * 4), "--max-tokens", "1", "--json",
    ]  # fmt: skip
    done = await asyncio.to_thread(
        subprocess.run, argv, capture_output=True, text=True, timeout=params.rps_duration_s + 60
    )
    if not done.stdout.strip():  # it exits 1, with its summary, when some requests failed
        raise RuntimeError(f"loadgen failed: {done.stderr[-2000:]}")
    raw = json.loads(done.stdout.strip().splitlines()[-1])
    return {
        "processes": processes,
        "concurrency": c,
        "rps": raw["rps"],
        "requests": raw["requests"],
        "errors": raw["errors"],
        "p50_ms": raw["e2e"].get("p50_ms"),
        "p99_ms": raw["e2e"].get("p99_ms"),
    }


async def run(params: Params) -> dict[str, Any]:
    fd_limit = raise_fd_limit(max(params.levels) * FDS_PER_STREAM + 1024)
    streams: list[dict[str, Any]] = []
    rps: list[dict[str, Any]] = []
    for i, processes in enumerate(params.processes):
        config = StackConfig(
            model_id=MODEL, workers=2, fake_tokens_per_s=params.tokens_per_s,
            slots=params.slots, max_queue=params.slots, start_timeout_s=60.0,
            stop_timeout_s=30.0, router_args=("--processes", str(processes)),
        )  # fmt: skip
        async with Stack(config) as stack:
            for level in params.levels if i == 0 else (max(params.levels),):
                streams.append(await stream_level(stack, params, processes, level))
            if params.rps_duration_s > 0:
                rps.append(await measure_rps(stack, params, processes))
    return {"fd_limit": fd_limit, "somaxconn": _somaxconn(), "streams": streams, "rps": rps}


def _somaxconn() -> int | None:
    try:
        return int(Path("/proc/sys/net/core/somaxconn").read_text())
    except (OSError, ValueError):
        return None


# -- report -----------------------------------------------------------------------------------


STREAM_COLUMNS = (
    "Processes", "Streams", "OK", "Failures", "Overflows / drops", "TTFT p50", "TTFT p99",
    "Peak open", "Router RSS", "RSS / open stream", "CPU / chunk",
)  # fmt: skip
RPS_COLUMNS = ("Processes", "Requests/s", "p50", "p99", "Errors")


def _table(columns: tuple[str, ...], rows: list[list[str]]) -> list[str]:
    """A Markdown table, numbers right-aligned (failure and error lists left)."""
    align = ["---" if c in ("Failures", "Errors") else "---:" for c in columns]
    return ["| " + " | ".join(cells) + " |" for cells in (list(columns), align, *rows)]


def _stream_cells(r: dict[str, Any]) -> list[str]:
    return [
        str(r["processes"]), f"{r['streams']:,}", f"{r['ok']:,}", fmt_errors(r["failures"]),
        f"{r['listen_overflows']} / {r['listen_drops']}",
        f"{fmt_ms(r['ttft'].get('p50_ms'))} ms", f"{fmt_ms(r['ttft'].get('p99_ms'))} ms",
        f"{r['peak_open']:,}", f"{r['router_rss_peak_mib']:.0f} MiB",
        f"{fmt_num(r['rss_per_open_stream_kib'])} KiB", f"{fmt_num(r['cpu_us_per_chunk'])} µs",
    ]  # fmt: skip


def _rps_cells(r: dict[str, Any]) -> list[str]:
    return [
        str(r["processes"]), f"{r['rps']:,.0f}", f"{fmt_num(r['p50_ms'], 2)} ms",
        f"{fmt_num(r['p99_ms'], 2)} ms", fmt_errors(r["errors"]),
    ]  # fmt: skip


def render_markdown(data: dict[str, Any]) -> str:
    p, f = data["parameters"], data["figures"]
    lines = [
        "### Many open streams",
        "",
        header_line(data["metadata"]),
        "",
        f"One router (auth off, default --backlog 4096; somaxconn {f['somaxconn']}), two fake "
        f"workers ({p['slots']:,} slots each, {p['tokens_per_s']:g} tokens/s, {p['max_tokens']} "
        "tokens a stream); N clients open a stream each at the same moment, in the driver "
        f"process on the same cores (RLIMIT_NOFILE {f['fd_limit']}). Overflows/drops: TcpExt "
        "ListenOverflows/ListenDrops over the level, whole namespace. RSS: all router "
        "processes (VmRSS: with 2+ processes, pages they share count once each), at the sample "
        "with the most streams open; per stream: its growth over idle / streams open then. "
        "CPU per chunk: the router's whole CPU time over the level / SSE chunks the clients got.",
        "",
        *_table(STREAM_COLUMNS, [_stream_cells(r) for r in f["streams"]]),
    ]
    if f["rps"]:
        lines += [
            "",
            f"Non-streamed requests/s (max_tokens 1, {p['rps_duration_s']:g} s, concurrency "
            f"{p['rps_concurrency']}, `benchmarks.loadgen` in its own process):",
            "",
            *_table(RPS_COLUMNS, [_rps_cells(r) for r in f["rps"]]),
        ]
    return "\n".join(lines) + "\n"


CLI = Cli(
    Params,
    "python -m benchmarks.streams",
    "Bursts of paced streams through one router, and 1 vs N router processes.",
)


def main(argv: list[str] | None = None) -> int:
    params, args, argv = CLI.parse(argv)
    metadata = run_metadata(["python", "-m", "benchmarks.streams", *argv], args.smoke)
    figures = run_scenario(run(params))
    if figures is None:
        return 130
    data = {"scenario": "streams", "metadata": metadata, "parameters": asdict(params)}
    data["figures"] = figures
    write_report(args.out, "streams", data, render_markdown(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
