"""Scenario: the latency the router adds, and the requests/s one router process sustains.

    python -m benchmarks.router_overhead [--rounds N] [--requests-per-round N] [--out DIR]

Stack: redis-server, fake-engine workers (no time to first token, no delay between tokens, small
max_tokens) and one router, all on 127.0.0.1 (benchmarks/stack.py).

Part 1, added latency. One worker. The same closed-loop load goes direct (client -> worker) and
via the router (client -> router -> that same worker) in interleaved rounds, ABBA order (direct,
router, router, direct, ...), so drift on a shared machine hits both arms alike. For each of
{plain, streaming} x concurrency {1, 32}: pooled p50/p99 of E2E (and of time to first content
chunk when streaming) per arm, and added = router - direct per percentile. Also the median over
rounds of the per-round difference, which is less sensitive to slow drift.

Part 2, max requests/s of one router process. More workers are added so they are not the limit;
the router is pinned to one CPU and everything else (workers, redis, the load generator, this
process) to the others; a separate load-generator process (wrk with a POST Lua script when
installed, else `python -m benchmarks.loadgen`) drives plain requests at rising concurrency for a
fixed time. Reported per level: requests/s, latency, CPU used by the router and by the workers
(a router near 100 % of its core is the bottleneck). Plateau = the best level. For reference, the
same load direct to one worker pinned to the router's CPU.

Writes router_overhead.json (command, revision, machine, parameters, all figures) and
router_overhead.md (a table for the README) to --out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from benchmarks.loadgen import (
    LoadGenerator,
    LoadResult,
    LoadSpec,
    describe,
    merge,
    run_in_new_loop,
)
from benchmarks.meta import git_revision, machine_info
from benchmarks.metrics import percentile
from benchmarks.stack import (
    Stack,
    StackConfig,
    cpu_percent,
    cpu_seconds,
    host_busy_seconds,
    set_affinity,
)

logger = logging.getLogger(__name__)

CHAT_PATH = "/v1/chat/completions"
TARGET_ADDED_P50_MS = 1.0
TARGET_ADDED_P99_MS = 3.0
TARGET_RPS = 2000.0
REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True, slots=True)
class Params:
    rounds: int = 10
    requests_per_round: int = 1000
    concurrencies: tuple[int, ...] = (1, 32)
    warmup_requests: int = 200
    max_tokens: int = 8
    model_id: str = "bench-model"
    fake_tokens_per_s: float = 0.0
    worker_slots: int = 64
    worker_max_queue: int = 1024
    rps_workers: int = 3
    rps_concurrencies: tuple[int, ...] = (16, 32, 64, 128, 256)
    rps_duration_s: float = 10.0
    client: str = "auto"  # auto | wrk | python
    pin: bool = True

    def __post_init__(self) -> None:
        if self.rounds < 1 or self.requests_per_round < 1:
            raise ValueError("rounds and requests-per-round must be >= 1")
        if self.client not in ("auto", "wrk", "python"):
            raise ValueError(f"client must be auto, wrk or python, got {self.client!r}")
        if self.rps_duration_s <= 0 or self.rps_workers < 1:
            raise ValueError("rps-duration-s must be > 0 and rps-workers >= 1")


# --- Part 1: added latency ------------------------------------------------------------------


async def measure_latency(stack: Stack, params: Params) -> list[dict[str, Any]]:
    direct_url = stack.worker_urls[0] + CHAT_PATH
    router_url = stack.router_url + CHAT_PATH
    rows: list[dict[str, Any]] = []
    async with LoadGenerator(max(params.concurrencies)) as gen:
        for stream in (False, True):
            for concurrency in params.concurrencies:
                base = LoadSpec(
                    urls=(direct_url,),
                    model=params.model_id,
                    concurrency=concurrency,
                    requests=params.requests_per_round,
                    stream=stream,
                    max_tokens=params.max_tokens,
                )
                arms = {"direct": base, "router": replace(base, urls=(router_url,))}
                for spec in arms.values():  # open the pool's connections, warm both paths
                    await gen.run(replace(spec, requests=params.warmup_requests))
                runs: dict[str, list[LoadResult]] = {"direct": [], "router": []}
                before, t0 = cpu_snapshot(stack), time.perf_counter()
                for i in range(params.rounds):
                    order = ("direct", "router") if i % 2 == 0 else ("router", "direct")
                    for arm in order:
                        runs[arm].append(await gen.run(arms[arm]))
                row = latency_row(stream, concurrency, runs)
                row["cpu_percent"] = cpu_percent(
                    before, cpu_snapshot(stack), time.perf_counter() - t0
                )
                logger.info("latency %s", _latency_line(row))
                rows.append(row)
    return rows


def latency_row(
    stream: bool, concurrency: int, runs: dict[str, list[LoadResult]]
) -> dict[str, Any]:
    metrics = ["e2e_s", "ttfc_s"] if stream else ["e2e_s"]
    row: dict[str, Any] = {
        "mode": "stream" if stream else "plain",
        "concurrency": concurrency,
        "rounds": len(runs["direct"]),
    }
    pooled: dict[str, dict[str, list[float]]] = {}
    for arm, results in runs.items():
        timings = merge(results)
        pooled[arm] = {
            m: [getattr(t, m) for t in timings if t.ok and getattr(t, m) is not None]
            for m in metrics
        }
        row[arm] = {
            "requests": len(timings),
            "ok": sum(1 for t in timings if t.ok),
            "errors": _error_counts(results),
            "rps_mean": statistics.fmean(r.rps for r in results),
            **{_metric_name(m): describe(pooled[arm][m]) for m in metrics},
        }
    added: dict[str, Any] = {}
    for m in metrics:
        name = _metric_name(m)
        direct, router = pooled["direct"][m], pooled["router"][m]
        entry: dict[str, Any] = {}
        for q in (50, 99):
            entry[f"p{q}_ms"] = (percentile(router, q) - percentile(direct, q)) * 1e3
            per_round = [
                percentile(r.values(m), q) - percentile(d.values(m), q)
                for d, r in zip(runs["direct"], runs["router"], strict=True)
            ]
            entry[f"p{q}_ms_median_of_rounds"] = statistics.median(per_round) * 1e3
        entry["meets_target"] = (
            entry["p50_ms"] <= TARGET_ADDED_P50_MS and entry["p99_ms"] <= TARGET_ADDED_P99_MS
        )
        added[name] = entry
    row["added"] = added
    return row


def _metric_name(field_name: str) -> str:
    return {"e2e_s": "e2e", "ttfc_s": "ttft", "ttfb_s": "ttfb"}[field_name]


def _error_counts(results: list[LoadResult]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in merge(results):
        if not t.ok:
            key = t.error or f"http_{t.status}"
            counts[key] = counts.get(key, 0) + 1
    return counts


def _latency_line(row: dict[str, Any]) -> str:
    parts = [f"{row['mode']:6s} c={row['concurrency']:<3d}"]
    for name, added in row["added"].items():
        d, r = row["direct"][name], row["router"][name]
        parts.append(
            f"{name}: direct p50 {d['p50_ms']:.3f} p99 {d['p99_ms']:.3f} | router p50 "
            f"{r['p50_ms']:.3f} p99 {r['p99_ms']:.3f} | added p50 {added['p50_ms']:+.3f} "
            f"p99 {added['p99_ms']:+.3f} ms"
        )
    return "  ".join(parts)


# --- Part 2: requests/s of one router process -----------------------------------------------

WRK_SCRIPT = """\
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [==[{body}]==]
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\\n{{"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,' ..
    '"timeout":%d,"p50_us":%.1f,"p90_us":%.1f,"p99_us":%.1f,"mean_us":%.1f,"max_us":%.1f}}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean,
    latency.max))
end
"""


@dataclass(frozen=True, slots=True)
class Placement:
    """Which CPUs the router and everything else run on (None: not pinned)."""

    router_cpus: frozenset[int] | None
    other_cpus: frozenset[int] | None

    def describe(self) -> str:
        if self.router_cpus is None or self.other_cpus is None:
            return "not pinned"
        return (
            f"router on CPU {_cpus(self.router_cpus)}; workers, redis, load generator and the "
            f"benchmark driver on CPU {_cpus(self.other_cpus)}"
        )


def _cpus(cpus: frozenset[int]) -> str:
    return ",".join(str(c) for c in sorted(cpus))


def choose_placement(pin: bool) -> Placement:
    cpus = sorted(os.sched_getaffinity(0))
    if not pin or len(cpus) < 2:
        return Placement(None, None)
    return Placement(frozenset(cpus[:1]), frozenset(cpus[1:]))


def choose_client(wanted: str) -> str:
    if wanted == "auto":
        return "wrk" if shutil.which("wrk") else "python"
    if wanted == "wrk" and shutil.which("wrk") is None:
        raise SystemExit("--client wrk: wrk is not on PATH (apt-get install -y wrk)")
    return wanted


async def run_client(
    client: str, url: str, params: Params, concurrency: int, cpus: frozenset[int] | None
) -> dict[str, Any]:
    """One fixed-duration run of a separate load-generator process; its summary."""
    body = LoadSpec(
        urls=(url,), model=params.model_id, concurrency=1, requests=1, max_tokens=params.max_tokens
    ).body()
    prefix = ["taskset", "-c", _cpus(cpus)] if cpus and shutil.which("taskset") else []
    with tempfile.TemporaryDirectory(prefix="bench-client-") as tmp:
        if client == "wrk":
            script = Path(tmp) / "post.lua"
            await asyncio.to_thread(script.write_text, WRK_SCRIPT.format(body=body.decode()))
            threads = max(1, min(len(cpus) if cpus else 1, concurrency))
            argv = [
                "wrk", "-t", str(threads), "-c", str(concurrency),
                "-d", f"{params.rps_duration_s:g}s", "--timeout", "10s", "-s", str(script), url,
            ]  # fmt: skip
        else:
            argv = [
                sys.executable, "-m", "benchmarks.loadgen", "--url", url,
                "--model", params.model_id, "--concurrency", str(concurrency),
                "--duration-s", f"{params.rps_duration_s:g}",
                "--warmup-requests", str(concurrency * 4),
                "--max-tokens", str(params.max_tokens), "--json",
            ]  # fmt: skip
        out = await _run_process([*prefix, *argv], params.rps_duration_s + 60)
    line = next(ln for ln in reversed(out.splitlines()) if ln.startswith("{"))
    raw = orjson.loads(line)
    if client == "wrk":
        duration_s = raw["duration_us"] / 1e6
        ok = raw["requests"] - raw["status"]
        errors = {k: raw[k] for k in ("connect", "read", "write", "status", "timeout") if raw[k]}
        return {
            "rps": ok / duration_s,
            "requests": raw["requests"],
            "ok": ok,
            "errors": errors,
            "duration_s": duration_s,
            "p50_ms": raw["p50_us"] / 1e3,
            "p99_ms": raw["p99_us"] / 1e3,
        }
    return {
        "rps": raw["rps"],
        "requests": raw["requests"],
        "ok": raw["ok"],
        "errors": raw["errors"],
        "duration_s": raw["wall_s"],
        "p50_ms": raw["e2e"].get("p50_ms"),
        "p99_ms": raw["e2e"].get("p99_ms"),
    }


async def _run_process(argv: list[str], timeout_s: float) -> str:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=REPO_ROOT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await asyncio.wait_for(proc.wait(), 10)
    text = out.decode(errors="replace")
    if proc.returncode not in (0, 1):  # loadgen exits 1 when some requests failed
        raise RuntimeError(f"{argv[0]} exited with {proc.returncode}:\n{text[-2000:]}")
    return text


async def measure_rps(stack: Stack, params: Params) -> dict[str, Any]:
    missing = params.rps_workers - len(stack.workers)
    if missing > 0:
        await stack.add_workers(missing)  # returns once the router sees them
    client = choose_client(params.client)  # "auto" resolved here if main() did not
    placement = choose_placement(params.pin)
    everything = set(os.sched_getaffinity(0))
    router = stack.router
    assert router is not None
    others = [p for p in stack.procs if p is not router]
    if placement.router_cpus is not None and placement.other_cpus is not None:
        set_affinity(router.pid, set(placement.router_cpus))
        for proc in others:
            set_affinity(proc.pid, set(placement.other_cpus))
        set_affinity(os.getpid(), set(placement.other_cpus))
    router_url = stack.router_url + CHAT_PATH
    levels: list[dict[str, Any]] = []
    try:
        await _check_path(router_url, params)
        for concurrency in params.rps_concurrencies:
            level = await _rps_level(stack, client, router_url, params, concurrency, placement)
            levels.append(level)
            logger.info(
                "rps c=%d: %.0f req/s, p50 %.2f ms, p99 %.2f ms, router CPU %.0f %%, errors %s",
                concurrency,
                level["rps"],
                level["p50_ms"],
                level["p99_ms"],
                level["cpu_percent"]["router"],
                level["errors"],
            )
        best = max(levels, key=lambda lv: float(lv["rps"]))
        # Reference: the same load straight to one worker, on the CPU the router had.
        worker = stack.workers[0]
        if placement.router_cpus is not None:
            set_affinity(worker.pid, set(placement.router_cpus))
        direct = await _rps_level(
            stack, client, worker.url + CHAT_PATH, params, best["concurrency"], placement
        )
        logger.info("rps direct to one worker c=%d: %.0f req/s", best["concurrency"], direct["rps"])
    finally:
        for proc in stack.procs:
            set_affinity(proc.pid, everything)
        set_affinity(os.getpid(), everything)
    top = levels[-2:]
    return {
        "client": client,
        "placement": placement.describe(),
        "workers": len(stack.workers),
        "duration_s": params.rps_duration_s,
        "levels": levels,
        "plateau_rps": best["rps"],
        "plateau_concurrency": best["concurrency"],
        "plateaued": len(top) == 2 and min(lv["rps"] for lv in top) >= 0.9 * best["rps"],
        "plateau_router_cpu_percent": best["cpu_percent"]["router"],
        "router_bound": best["cpu_percent"]["router"] >= 90.0,
        "meets_target": best["rps"] >= TARGET_RPS,
        "direct_one_worker": direct,
    }


async def _check_path(url: str, params: Params) -> None:
    """One request first, so a broken path fails loudly instead of as a sea of errors."""
    spec = LoadSpec(urls=(url,), model=params.model_id, concurrency=1, requests=1)
    headers = {"Content-Type": "application/json"}
    timeout = aiohttp.ClientTimeout(total=10)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.post(url, data=spec.body(), headers=headers) as resp,
    ):
        body = await resp.read()
        if resp.status != 200:
            raise RuntimeError(f"POST {url} -> {resp.status}: {body[:500]!r}")


async def _rps_level(
    stack: Stack,
    client: str,
    url: str,
    params: Params,
    concurrency: int,
    placement: Placement,
) -> dict[str, Any]:
    before = cpu_snapshot(stack)
    t0 = time.perf_counter()
    result = await run_client(client, url, params, concurrency, placement.other_cpus)
    wall_s = time.perf_counter() - t0
    cpu = cpu_percent(before, cpu_snapshot(stack), wall_s)
    return {"concurrency": concurrency, **result, "cpu_percent": cpu, "wall_s": wall_s}


def cpu_snapshot(stack: Stack) -> dict[str, float]:
    """CPU seconds used so far by each part of the stack, by this process, by its reaped
    children (the separate load generator, once it has exited) and by the whole machine."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "router": cpu_seconds(stack.router.pid) if stack.router else 0.0,
        "workers": sum(cpu_seconds(w.pid) for w in stack.workers),
        "redis": cpu_seconds(stack.redis.pid) if stack.redis else 0.0,
        "driver": cpu_seconds(os.getpid()),
        "client": children.ru_utime + children.ru_stime,
        "machine": host_busy_seconds(),
    }


def client_detail(client: str) -> str:
    if client == "wrk":
        try:
            out = subprocess.run(["wrk", "--version"], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return "wrk"
        text = (out.stdout or out.stderr).strip()
        return text.splitlines()[0] if text else "wrk"
    return "python -m benchmarks.loadgen (aiohttp, one process)"


# --- Run, metadata, output ------------------------------------------------------------------


async def run(params: Params) -> dict[str, Any]:
    config = StackConfig(
        model_id=params.model_id,
        workers=1,
        fake_ttft_ms=0.0,
        fake_tokens_per_s=params.fake_tokens_per_s,
        slots=params.worker_slots,
        max_queue=params.worker_max_queue,
    )
    # SIGTERM (e.g. from `timeout`) cancels the run like Ctrl-C does, so the stack's processes
    # are still stopped by PID on the way out.
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        async with Stack(config) as stack:
            started = time.perf_counter()
            latency = await measure_latency(stack, params)
            latency_s = time.perf_counter() - started
            started = time.perf_counter()
            rps = await measure_rps(stack, params)
            rps_s = time.perf_counter() - started
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
    return {
        "latency": latency,
        "throughput": rps,
        "elapsed_s": {"latency": latency_s, "rps": rps_s},
    }


def render_markdown(report: dict[str, Any]) -> str:
    p = report["parameters"]
    m = report["machine"]
    rev = report["git"]
    rev_text = rev["head"][:12] + (" + uncommitted changes" if rev["dirty"] else "")
    lines = [
        "### Router overhead",
        "",
        f"Fake-engine workers (no TTFT, no token delay, max_tokens {p['max_tokens']}), one "
        f"router, redis, all on one machine: {m['cpu_model']}, {m['nproc']} CPUs; "
        f"{report['date']}, revision {rev_text}. Command: `{report['command']}`.",
        "",
        f"**Added latency.** One worker. *Direct* = client -> worker; *router* = client -> "
        f"router -> the same worker. {p['rounds']} rounds x {p['requests_per_round']} requests "
        "per arm, interleaved (ABBA), closed loop, percentiles over all rounds; added = router "
        "- direct at the same percentile. Client: `benchmarks.loadgen` (aiohttp) in the driver "
        "process, nothing pinned. Target: added p50 <= 1 ms and p99 <= 3 ms.",
        "",
        "| Mode | Conc. | Metric | Direct p50 | Router p50 | **Added p50** | Direct p99 "
        "| Router p99 | **Added p99** | Req/s direct / router | Target |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in report["latency"]:
        for name, added in row["added"].items():
            d, r = row["direct"][name], row["router"][name]
            label = "TTFT" if name == "ttft" else "E2E"
            lines.append(
                f"| {row['mode']} | {row['concurrency']} | {label} | {d['p50_ms']:.2f} ms "
                f"| {r['p50_ms']:.2f} ms | **{added['p50_ms']:+.2f} ms** | {d['p99_ms']:.2f} ms "
                f"| {r['p99_ms']:.2f} ms | **{added['p99_ms']:+.2f} ms** "
                f"| {row['direct']['rps_mean']:,.0f} / {row['router']['rps_mean']:,.0f} "
                f"| {'met' if added['meets_target'] else 'not met'} |"
            )
    other = max(row["cpu_percent"]["other"] for row in report["latency"])
    lines += [
        "",
        f"CPU used by processes outside the benchmark during these rows: up to {other:.0f} % "
        "of one core. At concurrency above 1 a closed loop runs each path at its throughput "
        "limit, so the added latency there is mostly queueing behind the router's CPU "
        "(latency = concurrency / requests/s), not the per-request cost; the concurrency-1 "
        "rows measure that cost.",
    ]
    t = report["throughput"]
    lines += [
        "",
        f"**Requests/s of one router process.** {t['workers']} workers, plain requests, "
        f"{t['duration_s']:g} s per level, load from `{t['client_detail']}` in its own process; "
        f"{t['placement']}. CPU columns: percent of one core; *other* = processes outside the "
        "benchmark and hypervisor steal (noise).",
        "",
        "| Concurrency | Requests/s | p50 | p99 | Router CPU | Workers CPU | Client CPU "
        "| Other CPU | Errors |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for lv in t["levels"]:
        errors = ", ".join(f"{k} {v}" for k, v in lv["errors"].items()) or "0"
        lines.append(
            f"| {lv['concurrency']} | {lv['rps']:,.0f} | {lv['p50_ms']:.2f} ms "
            f"| {lv['p99_ms']:.2f} ms | {lv['cpu_percent']['router']:.0f} % "
            f"| {lv['cpu_percent']['workers']:.0f} % | {lv['cpu_percent']['client']:.0f} % "
            f"| {lv['cpu_percent']['other']:.0f} % | {errors} |"
        )
    direct = t["direct_one_worker"]
    lines += [
        "",
        f"Plateau: **{t['plateau_rps']:,.0f} requests/s** at concurrency "
        f"{t['plateau_concurrency']} (target >= {TARGET_RPS:,.0f}: "
        f"{'met' if t['meets_target'] else 'not met'}); the router used "
        f"{t['plateau_router_cpu_percent']:.0f} % of its core there "
        f"({'the bottleneck' if t['router_bound'] else 'below 90 %: not clearly the bottleneck'}"
        f"). Same load straight to one worker on the router's CPU: {direct['rps']:,.0f} "
        "requests/s.",
        "",
        f"Load average at start {m['loadavg_start'][0]:.2f}, at end "
        f"{m['loadavg_end'][0]:.2f} (1 min); numbers from a busy machine are noisy.",
        "",
    ]
    return "\n".join(lines)


def _parse_args(argv: list[str]) -> argparse.Namespace:
    d = Params()
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.router_overhead",
        description="Router-added latency and max requests/s of one router process.",
    )
    p.add_argument("--rounds", type=int, default=d.rounds, help="interleaved rounds per arm")
    p.add_argument("--requests-per-round", type=int, default=d.requests_per_round)
    p.add_argument("--concurrency", type=_int_list, default=d.concurrencies, help="e.g. 1,32")
    p.add_argument("--max-tokens", type=int, default=d.max_tokens)
    p.add_argument("--rps-workers", type=int, default=d.rps_workers)
    p.add_argument("--rps-concurrency", type=_int_list, default=d.rps_concurrencies)
    p.add_argument("--rps-duration-s", type=float, default=d.rps_duration_s)
    p.add_argument("--client", choices=("auto", "wrk", "python"), default=d.client)
    p.add_argument("--no-pin", action="store_true", help="do not pin router / the rest to CPUs")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results")
    return p.parse_args(argv)


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {text!r}")
    return values


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    params = Params(
        rounds=args.rounds,
        requests_per_round=args.requests_per_round,
        concurrencies=args.concurrency,
        max_tokens=args.max_tokens,
        rps_workers=args.rps_workers,
        rps_concurrencies=args.rps_concurrency,
        rps_duration_s=args.rps_duration_s,
        client=choose_client(args.client),
        pin=not args.no_pin,
    )
    machine = machine_info()
    git = git_revision()
    started = datetime.now(UTC)
    try:
        figures = run_in_new_loop(run(params))
    except (asyncio.CancelledError, KeyboardInterrupt):
        logger.warning("interrupted; the stack was stopped, nothing written")
        return 130
    machine["loadavg_end"] = list(os.getloadavg())
    report: dict[str, Any] = {
        "scenario": "router_overhead",
        "command": shlex.join(["python", "-m", "benchmarks.router_overhead", *argv]),
        "date": started.isoformat(timespec="seconds"),
        "git": git,
        "git_revision": git["revision"],
        "machine": machine,
        "parameters": asdict(params),
        "targets": {
            "added_p50_ms": TARGET_ADDED_P50_MS,
            "added_p99_ms": TARGET_ADDED_P99_MS,
            "rps_per_router": TARGET_RPS,
        },
        **figures,
    }
    report["throughput"]["client_detail"] = client_detail(params.client)
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / "router_overhead.json"
    md_path = args.out / "router_overhead.md"
    json_path.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
    md_path.write_text(render_markdown(report))
    sys.stdout.write(md_path.read_text())
    sys.stdout.write(f"\nwrote {json_path} and {md_path}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
