"""The router alone: run both parts on one stack, and write router_overhead_alone.{json,md}.

python -m benchmarks.router_overhead.cli [--rounds N] [--requests-per-round N] [--out DIR]
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from benchmarks.flags import Cli
from benchmarks.meta import git_revision, machine_info
from benchmarks.router_overhead.latency import measure_latency
from benchmarks.router_overhead.params import (
    TARGET_ADDED_P50_MS,
    TARGET_ADDED_P99_MS,
    TARGET_RPS,
    Params,
)
from benchmarks.router_overhead.rps import choose_client, client_detail, measure_rps
from benchmarks.scenario import run_scenario
from benchmarks.stack import Stack, StackConfig

logger = logging.getLogger(__name__)


async def run(params: Params) -> dict[str, Any]:
    config = StackConfig(
        model_id=params.model_id,
        workers=1,
        fake_ttft_ms=0.0,
        fake_tokens_per_s=params.fake_tokens_per_s,
        slots=params.worker_slots,
        max_queue=params.worker_max_queue,
    )
    async with Stack(config) as stack:
        started = time.perf_counter()
        latency = await measure_latency(stack, params)
        latency_s = time.perf_counter() - started
        started = time.perf_counter()
        rps = await measure_rps(stack, params)
        rps_s = time.perf_counter() - started
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
    return "\n".join(lines + _throughput_lines(report))


def _throughput_lines(report: dict[str, Any]) -> list[str]:
    t, m = report["throughput"], report["machine"]
    lines = [
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
    return lines


CLI = Cli(
    Params,
    "python -m benchmarks.router_overhead.cli",
    "Router-added latency and max requests/s of one router process.",
    ("out",),
)


def report_head(scenario: str, module: str, argv: list[str], params: Any) -> dict[str, Any]:
    """A report's metadata, taken before the run (git state, machine, load average)."""
    git = git_revision()
    return {
        "scenario": scenario,
        "command": shlex.join(["python", "-m", module, *argv]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "git": git,
        "git_revision": git["revision"],
        "machine": machine_info(),
        "parameters": asdict(params),
    }


def write_outputs(
    out: Path, stem: str, report: dict[str, Any], render: Callable[[dict[str, Any]], str]
) -> None:
    """STEM.json and STEM.md (`render(report)`) in `out`, with the load average at the end;
    prints the Markdown."""
    report["machine"]["loadavg_end"] = list(os.getloadavg())
    markdown = render(report)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / f"{stem}.json", out / f"{stem}.md"
    json_path.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
    md_path.write_text(markdown)
    sys.stdout.write(markdown)
    sys.stdout.write(f"\nwrote {json_path} and {md_path}\n")


def main(argv: list[str] | None = None) -> int:
    params, args, argv = CLI.parse(argv)
    params = replace(params, client=choose_client(params.client))
    head = report_head("router_overhead_alone", "benchmarks.router_overhead.cli", argv, params)
    figures = run_scenario(run(params))
    if figures is None:
        return 130
    report: dict[str, Any] = {
        **head,
        "targets": {
            "added_p50_ms": TARGET_ADDED_P50_MS,
            "added_p99_ms": TARGET_ADDED_P99_MS,
            "rps_per_router": TARGET_RPS,
        },
        **figures,
    }
    report["throughput"]["client_detail"] = client_detail(params.client)
    write_outputs(args.out, "router_overhead_alone", report, render_markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
