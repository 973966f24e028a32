"""Scenario: scale-out. 1 and 2 router replicas sharing one Redis, in front of many fake workers.

    python -m benchmarks scale_out [--routers 1,2] [--workers 8] [--concurrency 32,64,128]
        [--duration-s 15] [--client-procs 1]

Stack: redis, `--workers` fake-engine workers that take no time (no TTFT, no delay between
tokens, 64 slots each) so the routers are what limits, and R router replicas sharing the Redis;
a fresh stack per R. Load: closed loop at each total concurrency for a fixed time, streamed
requests of `--max-tokens` tokens; the load generator spreads requests round-robin over the R
router URLs. It runs as `--client-procs` separate `python -m benchmarks` processes (concurrency
split evenly between them) so the client is not what limits; their requests/s add up and their
latencies are pooled. When the machine has at least R + 2 CPUs, router i is pinned to CPU i
and everything else to the rest (`--no-pin` to turn off).

Reported per (R, concurrency): requests/s, output tokens/s, TTFT and E2E percentiles, errors,
and the CPU each router used (a router near 100 % of its core is the limit). Scale-out factor:
best requests/s with 2 routers / with 1. Writes scale_out.json, scale_out.md, scale_out.csv and
scale_out.{latency,throughput}.png to --out (default benchmarks/results).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import report
from benchmarks.cpu import cpu_percent, cpu_seconds, host_busy_seconds, set_affinity
from benchmarks.flags import Cli, option
from benchmarks.meta import REPO_ROOT, run_metadata
from benchmarks.metrics import RunSummary, summarize
from benchmarks.scenario import header_line, run_scenario, write_report
from benchmarks.stack import Stack, StackConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Params:
    routers: tuple[int, ...] = field(default=(1, 2), metadata=option("e.g. 1,2"))
    workers: int = field(default=8, metadata=option())
    concurrencies: tuple[int, ...] = field(
        default=(32, 64, 128), metadata=option("total", flag="--concurrency")
    )
    duration_s: float = field(default=15.0, metadata=option("per level"))
    warmup_requests: int = field(default=200, metadata=option("per client process and level"))
    max_tokens: int = field(default=16, metadata=option())
    stream: bool = field(default=True, metadata=option("plain requests"))
    client_procs: int = field(default=1, metadata=option())
    pin: bool = field(default=True, metadata=option("do not pin routers to CPUs"))
    prompt_words: int = 16
    worker_slots: int = 64
    worker_max_queue: int = 1024
    model_id: str = "bench-model"

    def __post_init__(self) -> None:
        if min(self.routers) < 1 or self.workers < 1 or self.client_procs < 1:
            raise ValueError("routers, workers and client processes must be >= 1")
        if min(self.concurrencies) < self.client_procs:
            raise ValueError("every concurrency level must be >= --client-procs")
        if not self.duration_s > 0:
            raise ValueError(f"duration must be > 0, got {self.duration_s}")


@dataclass(frozen=True, slots=True)
class Placement:
    router_cpus: tuple[int, ...]  # router i on router_cpus[i]; () when not pinned
    other_cpus: tuple[int, ...]

    def describe(self) -> str:
        if not self.router_cpus:
            return "not pinned"
        routers = ", ".join(f"router {i} on CPU {c}" for i, c in enumerate(self.router_cpus))
        others = ",".join(str(c) for c in self.other_cpus)
        return f"{routers}; workers, redis and the load generator on CPU {others}"


def placement(routers: int, pin: bool) -> Placement:
    cpus = sorted(os.sched_getaffinity(0))
    if not pin or len(cpus) < routers + 2:
        return Placement((), ())
    return Placement(tuple(cpus[:routers]), tuple(cpus[routers:]))


async def run_clients(
    params: Params, urls: list[str], concurrency: int, cpus: tuple[int, ...], tmp: Path
) -> list[Path]:
    """`client_procs` harness processes at once; the prefixes of their result files."""
    procs: list[asyncio.subprocess.Process] = []
    prefixes: list[Path] = []
    share = [concurrency // params.client_procs] * params.client_procs
    for i in range(concurrency % params.client_procs):
        share[i] += 1
    pinned = bool(cpus) and await asyncio.to_thread(shutil.which, "taskset") is not None
    taskset = ["taskset", "-c", ",".join(map(str, cpus))] if pinned else []
    for k, c in enumerate(share):
        name = f"client{k}"
        argv = [
            *taskset, sys.executable, "-m", "benchmarks",
            *(arg for url in urls for arg in ("--base-url", url)),
            "--model", params.model_id,
            "--concurrency", str(c),
            "--duration-s", f"{params.duration_s:g}",
            "--warmup-requests", str(params.warmup_requests),
            "--input-len", str(params.prompt_words),
            "--output-len", str(params.max_tokens),
            "--seed", str(k),
            "--out", str(tmp), "--name", name, "--no-plots", "--no-progress",
            *(() if params.stream else ("--no-stream",)),
        ]  # fmt: skip
        log = await asyncio.to_thread((tmp / f"{name}.log").open, "wb")
        try:
            procs.append(
                await asyncio.create_subprocess_exec(
                    *argv, stdout=log, stderr=asyncio.subprocess.STDOUT, cwd=REPO_ROOT
                )
            )
        finally:
            log.close()
        prefixes.append(tmp / name)
    try:
        codes = await asyncio.wait_for(
            asyncio.gather(*(p.wait() for p in procs)), params.duration_s + 120
        )
    finally:
        for p in procs:
            if p.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
                await p.wait()
    for prefix, code in zip(prefixes, codes, strict=True):
        if code not in (0, 1):
            tail = (await asyncio.to_thread(_file(prefix, ".log").read_text))[-2000:]
            raise RuntimeError(f"load generator {prefix.name} exited with {code}:\n{tail}")
    return prefixes


def _file(prefix: Path, suffix: str) -> Path:
    return prefix.with_name(prefix.name + suffix)


def merge_clients(prefixes: list[Path]) -> dict[str, Any]:
    """One level's figures from its client processes: throughputs add up, latencies pooled."""
    runs = [report.read_summary(_file(p, ".json"))["runs"][0] for p in prefixes]
    records = [r for p in prefixes for r in report.read_requests(_file(p, ".requests.jsonl"))]
    merged = summarize(records, RunSummary(max(r["duration"] for r in runs)))
    for key in ("request_throughput", "output_throughput", "total_token_throughput"):
        merged[key] = sum(r[key] for r in runs)
    merged["max_concurrent_requests"] = sum(r["max_concurrent_requests"] for r in runs)
    merged["client_durations"] = [r["duration"] for r in runs]
    errors: Counter[str] = Counter()
    for r in runs:
        errors.update(r["errors"])
    merged["errors"] = dict(sorted(errors.items()))
    return merged


def _cpu(stack: Stack) -> dict[str, float]:
    children = resource.getrusage(resource.RUSAGE_CHILDREN)  # reaped: the finished clients
    out = {f"router{i}": cpu_seconds(r.pid) for i, r in enumerate(stack.routers)}
    out["workers"] = sum(cpu_seconds(w.pid) for w in stack.workers)
    out["client"] = children.ru_utime + children.ru_stime
    out["machine"] = host_busy_seconds()
    return out


async def run_routers(params: Params, routers: int) -> list[dict[str, Any]]:
    config = StackConfig(
        model_id=params.model_id,
        workers=params.workers,
        routers=routers,
        slots=params.worker_slots,
        max_queue=params.worker_max_queue,
    )
    place = placement(routers, params.pin)
    everything = set(os.sched_getaffinity(0))
    levels: list[dict[str, Any]] = []
    async with Stack(config) as stack:
        try:
            if place.router_cpus:
                for proc in stack.procs:
                    set_affinity(proc.pid, set(place.other_cpus))
                for router, core in zip(stack.routers, place.router_cpus, strict=True):
                    set_affinity(router.pid, {core})
            for concurrency in params.concurrencies:
                tmp = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="bench-scale-out-"))
                try:
                    before, t0 = _cpu(stack), time.perf_counter()
                    prefixes = await run_clients(
                        params, stack.router_urls, concurrency, place.other_cpus, tmp
                    )
                    wall = time.perf_counter() - t0
                    after = _cpu(stack)
                    level = await asyncio.to_thread(merge_clients, prefixes)
                finally:
                    await asyncio.to_thread(shutil.rmtree, tmp, True)
                cpu = cpu_percent(before, after, wall)
                level = {
                    "routers": routers,
                    "concurrency": concurrency,
                    **level,
                    "cpu_percent": cpu,
                    "placement": place.describe(),
                }
                logger.info(
                    "%d router(s), concurrency %d: %.0f req/s, p50 E2E %.1f ms, router CPU %s",
                    routers,
                    concurrency,
                    level["request_throughput"],
                    level["p50_e2el_ms"],
                    ", ".join(f"{cpu[f'router{i}']:.0f} %" for i in range(routers)),
                )
                levels.append(level)
        finally:
            for proc in stack.procs:
                set_affinity(proc.pid, everything)
    return levels


async def run(params: Params) -> list[dict[str, Any]]:
    levels: list[dict[str, Any]] = []
    for routers in params.routers:
        levels += await run_routers(params, routers)
    return levels


def scale_factor(levels: list[dict[str, Any]]) -> dict[str, Any]:
    best = {
        r: max(lv["request_throughput"] for lv in levels if lv["routers"] == r)
        for r in {lv["routers"] for lv in levels}
    }
    out: dict[str, Any] = {"best_rps_by_routers": {str(r): v for r, v in sorted(best.items())}}
    if 1 in best and 2 in best and best[1] > 0:
        out["two_over_one"] = best[2] / best[1]
    return out


def render_markdown(data: dict[str, Any]) -> str:
    p = data["parameters"]
    lines = [
        "### Scale-out: router replicas",
        "",
        f"{p['workers']} fake-engine workers that take no time ({p['worker_slots']} slots each), "
        f"R routers sharing one Redis; closed loop, {'streamed' if p['stream'] else 'plain'} "
        f"requests of {p['max_tokens']} tokens spread round-robin over the router URLs by "
        f"{p['client_procs']} load-generator process(es), {p['duration_s']:g} s per level. "
        f"Placement: {data['levels'][0]['placement'] if data['levels'] else '-'} (with R = "
        f"{max(p['routers'])}). {header_line(data['metadata'])}",
        "",
        "| Routers | Concurrency | Req/s | Output tok/s | p50 TTFT | p99 TTFT | p50 E2E "
        "| p99 E2E | Router CPU | Client CPU | Other CPU | Errors |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---|",
    ]
    for lv in data["levels"]:
        cpu = lv["cpu_percent"]
        routers_cpu = " + ".join(f"{cpu[f'router{i}']:.0f} %" for i in range(lv["routers"]))
        cells = [
            str(lv["routers"]),
            str(lv["concurrency"]),
            report.fmt_num(lv["request_throughput"], 0),
            report.fmt_num(lv["output_throughput"], 0),
            *(f"{report.fmt_ms(lv[k])} ms" for k in ("p50_ttft_ms", "p99_ttft_ms")),
            *(f"{report.fmt_ms(lv[k])} ms" for k in ("p50_e2el_ms", "p99_e2el_ms")),
            routers_cpu,
            f"{cpu['client']:.0f} %",
            f"{cpu['other']:.0f} %",
            report.fmt_errors(lv["errors"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    factor = data["scale"].get("two_over_one")
    lines += [
        "",
        "CPU columns: percent of one core over the level; *other* = processes outside the "
        "benchmark and hypervisor steal (noise).",
    ]
    if factor is not None:
        lines.append(
            f"Best requests/s, 2 routers over 1: **x{factor:.2f}**. Scale-out needs CPU for the "
            "second router: on a machine where the routers share cores with the workers and the "
            "load generator, the factor measures the machine, not the router."
        )
    return "\n".join(lines) + "\n"


CLI = Cli(
    Params,
    "python -m benchmarks scale_out",
    "Requests/s with 1 and 2 router replicas sharing Redis.",
    ("out", "smoke", "plots"),
)


def main(argv: list[str] | None = None) -> int:
    params, args, argv = CLI.parse(argv)
    metadata = run_metadata(["python", "-m", "benchmarks", "scale_out", *argv], args.smoke)
    levels = run_scenario(run(params))
    if levels is None:
        return 130
    data: dict[str, Any] = {
        "scenario": "scale_out",
        "metadata": metadata,
        "parameters": asdict(params),
        "levels": levels,
        "scale": scale_factor(levels),
    }
    write_report(args.out, "scale_out", data, render_markdown(data))
    (args.out / "scale_out.csv").write_text(report.csv_text(levels))
    if not args.no_plots:
        series = [
            report.Series(f"{r} router(s)", [lv for lv in levels if lv["routers"] == r],
                          "concurrency")
            for r in params.routers
        ]  # fmt: skip
        report.plot(args.out / "scale_out", series, "scale-out")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
