"""Side by side, in one interleaved run: direct, nginx, vllm-router, the floor relay, this router
with auth off and with auth on (benchmarks.router_overhead.contestants), one mock upstream.

    python -m benchmarks.router_overhead [--rounds 5] [--duration-s 10] [--proxies a,b,...]

Each round runs every contestant once, the order rotated by one each round, so drift on a shared
machine spreads over all of them. Per contestant and round:

1. requests/s: `wrk`, `--connections` connections, non-streamed chat requests, `--duration-s`;
   CPU per request = the proxy's CPU time over the run (/proc/PID/stat, its process tree) /
   requests served.
2. c=1 latency: `--sequential-requests` requests one after another from this process (aiohttp);
   added p50/p99 = the contestant's minus direct's in the same round.
3. paced SSE: `--stream-waves` waves of `--streams` concurrent streams (the mock sends the role
   event at once, then `--chunks` content events `--chunk-gap-ms` apart): added TTFB (response
   headers) and added first content chunk over direct, and the p99 gap between content chunks.
4. RSS of the proxy's process tree after the round.

Figures are the median over rounds with the range; req/s also as the median of the per-round
ratio to the floor relay. Writes router_overhead.json and router_overhead.md to --out.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

from benchmarks.cpu import cpu_seconds
from benchmarks.flags import Cli, option, str_list
from benchmarks.loadgen import LoadGenerator, LoadSpec
from benchmarks.metrics import percentile
from benchmarks.router_overhead.cli import report_head, write_outputs
from benchmarks.router_overhead.compare_report import render_markdown, summarise
from benchmarks.router_overhead.contestants import (
    NAMES,
    Contestant,
    Field,
    process_tree,
    rss_bytes,
)
from benchmarks.router_overhead.mock_upstream import MODEL_ID
from benchmarks.router_overhead.params import CHAT_PATH
from benchmarks.router_overhead.rps import choose_placement, run_wrk
from benchmarks.scenario import run_scenario

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CompareParams:
    rounds: int = field(default=5, metadata=option("interleaved rounds"))
    duration_s: float = field(default=10.0, metadata=option("wrk run per contestant and round"))
    connections: int = field(default=64, metadata=option("wrk connections"))
    sequential_requests: int = field(default=2000, metadata=option("c=1 requests per round"))
    streams: int = field(default=16, metadata=option("concurrent SSE streams"))
    stream_waves: int = field(default=2, metadata=option("waves of --streams per round"))
    chunks: int = field(default=16, metadata=option("content events per stream"))
    chunk_gap_ms: float = field(default=20.0, metadata=option("the mock's pause between them"))
    warmup_s: float = field(default=2.0, metadata=option("wrk warm-up per contestant (>= 1)"))
    proxies: tuple[str, ...] = field(
        default=NAMES, metadata=option("contestants, comma-separated", parse=str_list)
    )
    max_tokens: int = 8
    pin: bool = field(default=True, metadata=option("do not pin proxies / the rest to CPUs"))

    def __post_init__(self) -> None:
        if min(self.rounds, self.connections, self.sequential_requests, self.streams) < 1:
            raise ValueError("rounds, connections, sequential-requests, streams must be >= 1")
        if min(self.duration_s, self.warmup_s) < 1 or self.stream_waves < 1:
            raise ValueError("duration-s and warmup-s must be >= 1 (wrk's whole seconds), "
                             "stream-waves >= 1")  # fmt: skip
        unknown = set(self.proxies) - set(NAMES)
        if unknown or "direct" not in self.proxies:
            raise ValueError(f"proxies: choose from {', '.join(NAMES)}; direct is required")


async def run(params: CompareParams) -> dict[str, Any]:
    placement = choose_placement(params.pin)
    if placement.other_cpus is not None:
        os.sched_setaffinity(0, placement.other_cpus)  # the driver beside the mock and wrk
    field_ = Field(placement.router_cpus, placement.other_cpus, params.chunks,
                   params.chunk_gap_ms, params.proxies)  # fmt: skip
    rounds: list[dict[str, Any]] = []
    async with field_, LoadGenerator(params.streams, timeout_s=60) as gen:
        for c in field_.contestants:  # open pools, warm code paths
            await run_wrk(c.url + CHAT_PATH, _body(params, False), params.connections,
                          params.warmup_s, placement.other_cpus, dict(c.headers))  # fmt: skip
            await gen.run(_spec(c, params, stream=True))
        for i in range(params.rounds):
            k = i % len(field_.contestants)
            order = field_.contestants[k:] + field_.contestants[:k]
            figures = {}
            for c in order:
                figures[c.name] = await measure(c, gen, params, placement.other_cpus)
                logger.info("round %d %s: %s", i + 1, c.name, _line(figures[c.name]))
            rounds.append({"order": [c.name for c in order], "figures": figures})
    return {
        "placement": _placement_text(placement.router_cpus, placement.other_cpus),
        "contestants": {c.name: c.label for c in field_.contestants},
        "skipped": field_.skipped,
        "rounds": rounds,
        "summary": summarise(rounds),
    }


async def measure(
    c: Contestant, gen: LoadGenerator, params: CompareParams, cpus: frozenset[int] | None
) -> dict[str, Any]:
    tree = process_tree(c.pid) if c.pid is not None else []
    cpu_before = sum(_cpu(p) for p in tree)
    wrk = await run_wrk(c.url + CHAT_PATH, _body(params, False), params.connections,
                        params.duration_s, cpus, dict(c.headers))  # fmt: skip
    cpu_s = sum(_cpu(p) for p in tree) - cpu_before
    seq = await gen.run(_spec(c, params, stream=False))
    e2e = seq.values("e2e_s")
    ttfb: list[float] = []
    first: list[float] = []
    gaps: list[float] = []
    stream_errors = 0
    for _ in range(params.stream_waves):
        sse = await gen.run(_spec(c, params, stream=True))
        ttfb += sse.values("ttfb_s")
        first += sse.values("ttft_s")
        gaps += [g for t in sse.timings if t.ok for g in t.itl_s]
        stream_errors += len(sse.timings) - sse.ok_count
    return {
        "rps": wrk["rps"],
        "requests": wrk["ok"],
        "wrk_errors": wrk["errors"],
        "wrk_p99_ms": wrk["p99_ms"],
        "cpu_us_per_request": cpu_s / wrk["ok"] * 1e6 if tree and wrk["ok"] else None,
        "c1_p50_ms": _ms(e2e, 50),
        "c1_p99_ms": _ms(e2e, 99),
        "c1_errors": len(seq.timings) - seq.ok_count,
        "ttfb_p50_ms": _ms(ttfb, 50),
        "first_chunk_p50_ms": _ms(first, 50),
        "chunk_gap_p99_ms": _ms(gaps, 99),
        "stream_errors": stream_errors,
        "rss_mib": rss_bytes(c.pid) / 2**20 if c.pid is not None else None,
    }


def _placement_text(proxy: frozenset[int] | None, other: frozenset[int] | None) -> str:
    if proxy is None or other is None:
        return "nothing pinned"
    return (
        f"each proxy on CPU {','.join(map(str, sorted(proxy)))} (taskset); the mock, redis, the "
        f"registrar, wrk and the driver on CPU {','.join(map(str, sorted(other)))}"
    )


def _cpu(pid: int) -> float:
    try:
        return cpu_seconds(pid)
    except OSError:  # a short-lived child gone since the tree was read
        return 0.0


def _ms(values: list[float], q: float) -> float | None:
    return percentile(values, q) * 1e3 if values else None


def _body(params: CompareParams, stream: bool) -> bytes:
    return _spec(Contestant("", "", "http://x"), params, stream).body()


def _spec(c: Contestant, params: CompareParams, stream: bool) -> LoadSpec:
    if stream:
        count, concurrency, max_tokens = params.streams, params.streams, params.chunks
    else:
        count, concurrency, max_tokens = params.sequential_requests, 1, params.max_tokens
    return LoadSpec(urls=(c.url + CHAT_PATH,), model=MODEL_ID, concurrency=concurrency,
                    requests=count, stream=stream, max_tokens=max_tokens,
                    headers=c.headers)  # fmt: skip


def _line(f: dict[str, Any]) -> str:
    cpu = f["cpu_us_per_request"]
    return (
        f"{f['rps']:,.0f} req/s, CPU {cpu:.0f} us/req, " if cpu is not None else
        f"{f['rps']:,.0f} req/s, "
    ) + (
        f"c=1 p50 {f['c1_p50_ms']:.3f} ms, first chunk p50 {f['first_chunk_p50_ms']:.2f} ms, "
        f"errors wrk {f['wrk_errors'] or 0} c1 {f['c1_errors']} sse {f['stream_errors']}"
    )  # fmt: skip


CLI = Cli(
    CompareParams,
    "python -m benchmarks.router_overhead",
    "Side by side on pinned cores: direct, nginx, vllm-router, a minimal aiohttp relay, "
    "this router (auth off / on), one mock upstream.",
    ("out", "smoke"),
)


def main(argv: list[str] | None = None) -> int:
    params, args, argv = CLI.parse(argv)
    head = report_head("router_overhead", "benchmarks.router_overhead", argv, params)
    t0 = time.perf_counter()
    figures = run_scenario(run(params))
    if figures is None:
        return 130
    report = {**head, "smoke": args.smoke, "elapsed_s": time.perf_counter() - t0, **figures}
    write_outputs(args.out, "router_overhead", report, render_markdown)
    return 0
