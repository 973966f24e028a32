"""Part 2: the requests/s one router process sustains, driven by a separate load-generator
process (wrk when installed, else `python -m benchmarks.loadgen`) at rising concurrency, with
the router pinned to one CPU and everything else to the others."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from benchmarks.cpu import cpu_percent, cpu_seconds, host_busy_seconds, set_affinity
from benchmarks.loadgen import LoadSpec
from benchmarks.processes import REPO_ROOT
from benchmarks.router_overhead.params import CHAT_PATH, TARGET_RPS, Params
from benchmarks.stack import Stack

logger = logging.getLogger(__name__)


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
    if client == "wrk":
        body = LoadSpec(
            urls=(url,), model=params.model_id, concurrency=1, requests=1,
            max_tokens=params.max_tokens,
        ).body()  # fmt: skip
        return await run_wrk(url, body, concurrency, params.rps_duration_s, cpus)
    argv = [
        sys.executable, "-m", "benchmarks.loadgen", "--url", url,
        "--model", params.model_id, "--concurrency", str(concurrency),
        "--duration-s", f"{params.rps_duration_s:g}",
        "--warmup-requests", str(concurrency * 4),
        "--max-tokens", str(params.max_tokens), "--json",
    ]  # fmt: skip
    raw = _last_json(await _run_process([*_pin(cpus), *argv], params.rps_duration_s + 60))
    return {
        "rps": raw["rps"],
        "requests": raw["requests"],
        "ok": raw["ok"],
        "errors": raw["errors"],
        "duration_s": raw["wall_s"],
        "p50_ms": raw["e2e"].get("p50_ms"),
        "p99_ms": raw["e2e"].get("p99_ms"),
    }


async def run_wrk(
    url: str,
    body: bytes,
    concurrency: int,
    duration_s: float,
    cpus: frozenset[int] | None,
    headers: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """`wrk` POSTing `body` (with `headers`) for `duration_s` (whole seconds, at least 1),
    pinned to `cpus`; its summary.
    A non-2xx answer counts as an error, not as a request served."""
    lines = "".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in (headers or {}).items())
    with tempfile.TemporaryDirectory(prefix="bench-client-") as tmp:
        script = Path(tmp) / "post.lua"
        text = WRK_SCRIPT.format(body=body.decode()) + lines
        await asyncio.to_thread(script.write_text, text)
        threads = max(1, min(len(cpus) if cpus else 1, concurrency))
        argv = [
            "wrk", "-t", str(threads), "-c", str(concurrency),
            "-d", f"{max(1, round(duration_s))}s", "--timeout", "10s", "-s", str(script), url,
        ]  # fmt: skip
        raw = _last_json(await _run_process([*_pin(cpus), *argv], duration_s + 60))
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


def _pin(cpus: frozenset[int] | None) -> list[str]:
    return ["taskset", "-c", _cpus(cpus)] if cpus and shutil.which("taskset") else []


def _last_json(out: str) -> Any:
    for line in reversed(out.splitlines()):
        if line.startswith("{"):
            return orjson.loads(line)
    raise RuntimeError(f"no summary line in the load generator's output:\n{out[-2000:]}")


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
