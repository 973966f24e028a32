"""The batched scenario's goals, its Markdown table, and what it records about the machine."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import llama_cpp

from benchmarks.processes import REPO_ROOT


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The goals: batched >= 1.8x single at C=8, >= 0.9x the bare loop's decode-only rate at
    every C (strict: the engine's figure includes its prompt reads), and a single stream no
    worse than the single-sequence engine."""
    engine = report["engine"]
    single = {lv["concurrency"]: lv for lv in engine.get("single", [])}
    batched = {lv["concurrency"]: lv for lv in engine.get("batched", [])}
    bare = {b["seqs"]: b for b in report["bare"] or []}
    out: list[dict[str, Any]] = []

    def check(name: str, value: float, goal: float) -> None:
        out.append({"target": name, "ratio": round(value, 2), "goal": goal, "met": value >= goal})

    if 8 in single and 8 in batched:
        check("batched / single tokens/s at C=8", _ratio(batched[8], single[8]), 1.8)
    if 1 in single and 1 in batched:
        check("batched / single tokens/s at C=1", _ratio(batched[1], single[1]), 0.95)
    for c, lv in sorted(batched.items()):
        if c in bare:
            ratio = lv["tokens_per_s"] / bare[c]["tokens_per_s"]
            check(f"batched / bare loop (decode steps only) at C={c}", ratio, 0.9)
    return out


def _ratio(a: dict[str, Any], b: dict[str, Any]) -> float:
    return float(a["tokens_per_s"]) / float(b["tokens_per_s"])


def render_markdown(report: dict[str, Any]) -> str:
    p, m = report["parameters"], report["machine"]
    engine, http = report["engine"], report["http"] or {}
    bare = {b["seqs"]: b for b in report["bare"] or []}
    lines = [
        f"### Continuous batching ({report['label']})",
        "",
        f"{m['device']}; {m['cpu_model']}, {m['nproc']} CPUs, threads {p['threads']}; "
        f"{report['date']}, revision {report['git_revision']}. Model {Path(p['model']).name}, "
        f"n_gpu_layers {p['n_gpu_layers']}, greedy, max_tokens {p['max_tokens']}, "
        f"{p['rounds']} request(s) per client, n_ctx {p['n_ctx']} per stream, prefill chunk "
        f"{p['prefill_chunk']}, KV {'unified' if p['kv_unified'] else 'one stream per slot'}. "
        f"Command: `{report['command']}`.",
        "",
        "Aggregate output tokens/s (completion tokens / wall time, closed loop) and mean time to "
        "first token (queueing included). *Engine*: engine.stream called from asyncio in one "
        "process. *Bare loop*: one llama_decode per step for all sequences and an argmax, "
        "decode steps only / with the prefill.",
        "",
        "| C | Bare decode | Bare e2e | Single | **Batched** | Batched/single "
        "| Batched/bare decode | TTFT single | TTFT batched | HTTP single | HTTP batched "
        "| HTTP TTFT single | HTTP TTFT batched |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for i, c in enumerate(p["concurrency"]):
        s = _at(engine.get("single"), i)
        b = _at(engine.get("batched"), i)
        hs, hb = _at(http.get("single"), i), _at(http.get("batched"), i)
        bl = bare.get(c)
        lines.append(
            f"| {c} | {_num(bl, 'tokens_per_s')} | {_num(bl, 'e2e_tokens_per_s')} "
            f"| {_num(s, 'tokens_per_s')} | **{_num(b, 'tokens_per_s')}** "
            f"| {_x(b, s)} | {_x(b, bl)} "
            f"| {_ms(s)} | {_ms(b)} | {_num(hs, 'tokens_per_s')} | {_num(hb, 'tokens_per_s')} "
            f"| {_ms(hs)} | {_ms(hb)} |"
        )
    lines.append("")
    for t in report["targets"]:
        verdict = "met" if t["met"] else "**not met**"
        lines.append(f"- {t['target']}: {t['ratio']} (goal >= {t['goal']}): {verdict}")
    load = m["loadavg_start"][0], m["loadavg_end"][0]
    lines += [
        "",
        f"Load average (1 min) {load[0]:.2f} at start, {load[1]:.2f} at end; figures from a "
        "busy machine are noisy.",
        "",
    ]
    return "\n".join(lines)


def _at(levels: list[dict[str, Any]] | None, i: int) -> dict[str, Any] | None:
    return levels[i] if levels and i < len(levels) else None


def _num(row: dict[str, Any] | None, key: str) -> str:
    return "-" if row is None else f"{row[key]:,.1f}"


def _ms(row: dict[str, Any] | None) -> str:
    return "-" if row is None else f"{row['ttft_mean_ms']:,.0f} ms"


def _x(a: dict[str, Any] | None, b: dict[str, Any] | None, key: str = "tokens_per_s") -> str:
    if a is None or b is None:
        return "-"
    return f"{a['tokens_per_s'] / b[key]:.2f}x"


def machine_info(n_gpu_layers: int) -> dict[str, Any]:
    cpu_model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    device = "CPU"
    if n_gpu_layers != 0 and llama_cpp.llama_supports_gpu_offload():
        device = "GPU " + _command(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"])
    return {
        "device": device,
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "llama_cpp_python": llama_cpp.__version__,
        "loadavg_start": list(os.getloadavg()),
    }


def git_revision() -> str:
    head = _command(["git", "-C", str(REPO_ROOT), "rev-parse", "--short=12", "HEAD"])
    dirty = _command(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--", "worker",
                      "benchmarks", "router"])  # fmt: skip
    return f"{head} + uncommitted changes" if dirty and head != "unknown" else head


def _command(args: list[str]) -> str:
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return done.stdout.strip() or ""
