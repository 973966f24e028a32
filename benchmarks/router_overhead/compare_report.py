"""The side-by-side run's summary over rounds and its Markdown table."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

Figures = dict[str, Any]
# (key in the summary, how one round's figure is computed from the contestant's and direct's)
METRICS: dict[str, Callable[[Figures, Figures], float | None]] = {
    "rps": lambda f, d: f["rps"],
    "cpu_us_per_request": lambda f, d: f["cpu_us_per_request"],
    "added_c1_p50_ms": lambda f, d: _minus(f["c1_p50_ms"], d["c1_p50_ms"]),
    "added_c1_p99_ms": lambda f, d: _minus(f["c1_p99_ms"], d["c1_p99_ms"]),
    "added_ttfb_ms": lambda f, d: _minus(f["ttfb_p50_ms"], d["ttfb_p50_ms"]),
    "added_first_chunk_ms": lambda f, d: _minus(f["first_chunk_p50_ms"], d["first_chunk_p50_ms"]),
    "chunk_gap_p99_ms": lambda f, d: f["chunk_gap_p99_ms"],
    "rss_mib": lambda f, d: f["rss_mib"],
}
FLOOR = "floor-relay"
TIMES, DASH = "\u00d7", "\u2013"
CAPPED_SHARE = 0.8  # a proxy at this share of direct's req/s may be held back by the mock


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _spread(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarise(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per contestant: median, min and max over rounds of each metric (added = minus direct's
    figure of the same round), req/s as a ratio to the floor relay's, and error counts."""
    names = list(rounds[0]["figures"])
    out: dict[str, Any] = {}
    for name in names:
        per_round = [(r["figures"][name], r["figures"]["direct"]) for r in rounds]
        entry: dict[str, Any] = {}
        for key, compute in METRICS.items():
            values = [v for f, d in per_round if (v := compute(f, d)) is not None]
            entry[key] = _spread(values)
        if FLOOR in names:
            ratios = [r["figures"][name]["rps"] / r["figures"][FLOOR]["rps"] for r in rounds]
            entry["rps_vs_floor"] = _spread(ratios)
        entry["errors"] = sum(
            f["c1_errors"] + f["stream_errors"] + sum(f["wrk_errors"].values())
            for f, _ in per_round
        )
        out[name] = entry
    direct = out["direct"]["rps"]["median"]
    for name, entry in out.items():
        entry["capped_by_mock"] = name != "direct" and entry["rps"]["median"] >= (
            CAPPED_SHARE * direct
        )
    return out


def _cell(spread: dict[str, float] | None, fmt: str, unit: str = "", sign: bool = False) -> str:
    if spread is None:
        return DASH
    lo, mid, hi = spread["min"], spread["median"], spread["max"]
    f = "{:+" + fmt + "}" if sign else "{:" + fmt + "}"
    text = f.format(mid) + unit
    if f.format(lo) != f.format(hi):
        text += f" ({f.format(lo)}{DASH}{f.format(hi)})"
    return text


def table_lines(report: dict[str, Any]) -> list[str]:
    lines = [
        f"| proxy | req/s | {TIMES} relay | CPU per request | added p50 at c=1 | added p99 at c=1 "
        "| added TTFB (SSE) | added first chunk | chunk-gap p99 | RSS | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in report["summary"].items():
        label = report["contestants"][name]
        if s["capped_by_mock"]:
            label += " *"
        lines.append(
            f"| {label} | {_cell(s['rps'], ',.0f')} | {_cell(s.get('rps_vs_floor'), '.2f', TIMES)} "
            f"| {_cell(s['cpu_us_per_request'], '.0f', ' µs')} "
            f"| {_cell(s['added_c1_p50_ms'], '.2f', ' ms', True)} "
            f"| {_cell(s['added_c1_p99_ms'], '.2f', ' ms', True)} "
            f"| {_cell(s['added_ttfb_ms'], '.2f', ' ms', True)} "
            f"| {_cell(s['added_first_chunk_ms'], '.2f', ' ms', True)} "
            f"| {_cell(s['chunk_gap_p99_ms'], '.1f', ' ms')} "
            f"| {_cell(s['rss_mib'], '.0f', ' MiB')} | {s['errors']} |"
        )
    return lines


def render_markdown(report: dict[str, Any]) -> str:
    p, m, rev = report["parameters"], report["machine"], report["git"]
    rev_text = rev["head"][:12] + (" + uncommitted changes" if rev["dirty"] else "")
    smoke = " **Smoke run: too short to quote.**" if report.get("smoke") else ""
    capped = any(s["capped_by_mock"] for s in report["summary"].values())
    lines = [
        "### Router overhead, side by side",
        "",
        f"{m['cpu_model']}, {m['nproc']} CPUs; {report['date']}, revision {rev_text}. "
        f"Command: `{report['command']}`.{smoke}",
        "",
        f"One mock OpenAI upstream (`benchmarks/router_overhead/mock_upstream.py`: bare asyncio "
        f"HTTP, prebuilt answers), each proxy in front of it; {report['placement']}. "
        f"{p['rounds']} interleaved rounds, each running every contestant once in a rotated "
        "order; figures are the median over rounds with the range in brackets. *req/s*: `wrk`, "
        f"{p['connections']} connections, non-streamed chat requests, {p['duration_s']:g} s; "
        "*CPU per request*: the proxy's CPU time over that run (/proc/PID/stat) / requests; "
        f"*{TIMES} relay*: req/s over the minimal aiohttp relay's in the same round. "
        "*Added at c=1*: "
        f"{p['sequential_requests']:,} sequential requests, percentile minus direct's in the "
        f"same round. *SSE*: {p['stream_waves']} {TIMES} {p['streams']} concurrent streams of "
        f"{p['chunks']} content chunks {p['chunk_gap_ms']:g} ms apart; TTFB and first content "
        "chunk at p50 minus direct's; chunk gap p99 absolute (the mock paces "
        f"{p['chunk_gap_ms']:g} ms). *RSS*: the proxy's process tree after the round.",
        "",
        *table_lines(report),
        "",
    ]
    if capped:
        lines += [
            "\\* within 80 % of direct's req/s: the mock upstream, sharing its core with `wrk`, "
            "may be the limit here, so that figure is a lower bound for the proxy.",
            "",
        ]
    for name, reason in report["skipped"].items():
        lines.append(f"Left out: {name} ({reason}).")
    lines += [
        "The minimal relay (`benchmarks/router_overhead/floor_relay.py`) is a floor to measure "
        "against, not a product: aiohttp's low-level server and one pooled client session, "
        "nothing else.",
        "",
        f"Load average at start {m['loadavg_start'][0]:.2f}, at end {m['loadavg_end'][0]:.2f} "
        f"(1 min); run took {report['elapsed_s']:.0f} s. Numbers from a busy machine are noisy.",
        "",
    ]
    return "\n".join(lines)
