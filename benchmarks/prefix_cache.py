"""Scenario: cache-aware routing against least-loaded on multi-turn conversations.

    python -m benchmarks prefix_cache [--rounds 2] [--conversations 16] [--turns 6] [--smoke]

Stack per run: redis, batched-engine workers (`--workers` x `--slots`, `--n-threads` each, the
default model, `--ignore-eos` so every reply is exactly `--max-tokens` tokens), one router with
the policy under test; a fresh stack for every run so no run inherits another's caches.
Workloads (benchmarks.conversations): `shared`, every conversation opens with the same
~600-token system prompt and sends its whole history each turn; `control`, the same shapes with
a system prompt of its own per conversation, so only a conversation's own history can be reused.
Policies run interleaved within each round (the order alternates between rounds), same seed.
Then the replica check: cache-aware with two router replicas behind nginx (round robin) against
one replica, on the shared workload; the hit rate (cached / prompt tokens, from the usage the
workers report) with two must be >= 0.9x that with one. Last, routing alone at a scale this
machine cannot run for real: `--fake-workers` fake-engine workers (slot caches only, time to
first token from the uncached prompt) with as many conversations as slots.

Writes prefix_cache.json and prefix_cache.md to --out (default benchmarks/results).
"""

from __future__ import annotations

import asyncio
import logging
import statistics
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from benchmarks import nginx, report
from benchmarks.conversations import Shape, drive, summary
from benchmarks.flags import Cli, option
from benchmarks.meta import run_metadata
from benchmarks.processes import MODEL_ID, MODEL_PATH, http_status
from benchmarks.scenario import header_line, run_scenario, write_report
from benchmarks.stack import Stack, StackConfig

logger = logging.getLogger(__name__)

POLICIES = ("least-loaded", "cache-aware")
# Today's worker without its host-RAM prompt cache (slot caches only), under least-loaded: what
# the worker's cache and the policy together are measured against on the shared workload.
NO_HOST_CACHE = "least-loaded, no host cache"
FIGURES = ("p50_ttft_ms", "p99_ttft_ms", "output_tokens_per_s", "hit_rate")


@dataclass(frozen=True, slots=True)
class Params:
    rounds: int = field(default=2, metadata=option("interleaved rounds"))
    workers: int = field(default=2, metadata=option())
    slots: int = field(default=4, metadata=option("per worker"))
    n_threads: int = field(default=1, metadata=option("per worker"))
    conversations: int = field(default=16, metadata=option())
    turns: int = field(default=6, metadata=option())
    system_words: int = field(default=450, metadata=option("about 600 tokens"))
    question_words: int = field(default=16, metadata=option())
    max_tokens: int = field(default=32, metadata=option("per reply, exact (--ignore-eos)"))
    replicas: bool = field(default=True, metadata=option("also run the two-replica check"))
    control: bool = field(default=True, metadata=option("also run the control workload"))
    baseline: bool = field(
        default=True, metadata=option("also run least-loaded on workers without the host cache")
    )
    think_s: float = field(
        default=0.0, metadata=option("mean pause before each later turn (0: closed loop)")
    )
    fake_workers: int = field(
        default=8, metadata=option("the routing-only run: fake-engine workers (0: skip it)")
    )
    model_path: str = field(default=MODEL_PATH, metadata=option())
    seed: int = field(default=0, metadata=option())

    def __post_init__(self) -> None:
        if min(self.rounds, self.workers, self.slots, self.conversations, self.turns) < 1:
            raise ValueError("rounds, workers, slots, conversations and turns must be >= 1")

    def shape(self, shared: bool) -> Shape:
        return Shape(self.conversations, self.turns, self.system_words, self.question_words,
                     self.max_tokens, shared, self.seed, self.think_s)  # fmt: skip


async def one_run(params: Params, arm: str, shared: bool, routers: int) -> dict[str, Any]:
    policy = "least-loaded" if arm == NO_HOST_CACHE else arm
    cache = ("--prompt-cache-mib", "0") if arm == NO_HOST_CACHE else ()
    config = StackConfig(
        model_id=MODEL_ID,
        workers=params.workers,
        routers=routers,
        engine="batched",
        model_path=params.model_path,
        n_threads=params.n_threads,
        slots=params.slots,
        max_queue=params.conversations,
        start_timeout_s=180.0,
        worker_args=("--ignore-eos", "on", *cache),
        router_args=("--policy", policy),
    )
    async with Stack(config) as stack:
        urls = stack.router_urls
        proxy = None
        if routers > 1:
            proxy = nginx.nginx_service(urls, stack.log_dir / "nginx")
            await asyncio.to_thread(proxy.start)
            await asyncio.to_thread(
                proxy.wait_ready, lambda: http_status(proxy.url + "/health") == 200, 10, "health"
            )
            urls = [proxy.url]
        try:
            turns, wall_s = await drive([u + "/v1" for u in urls], MODEL_ID, params.shape(shared))
        finally:
            if proxy is not None:
                await asyncio.to_thread(proxy.stop)
    figures = summary(turns, wall_s)
    workload = "shared" if shared else "control"
    logger.info(
        "%s %s, %d router(s): p50 TTFT %.0f ms, p99 %.0f ms, %.1f tok/s, hit rate %.2f, %d errors",
        workload, policy, routers, figures["p50_ttft_ms"] or 0, figures["p99_ttft_ms"] or 0,
        figures["output_tokens_per_s"] or 0, figures["hit_rate"] or 0, figures["errors"],
    )  # fmt: skip
    return {"workload": workload, "policy": arm, "routers": routers, **figures}


async def fake_run(params: Params, policy: str) -> dict[str, Any]:
    """Routing alone, at a scale the CPU could not run for real: `fake_workers` fake-engine
    workers whose time to first token is their uncached prompt at 2,000 tokens/s (slot caches
    only, no host cache), as many conversations as slots, so nothing queues."""
    slots = params.slots
    config = StackConfig(
        workers=params.fake_workers,
        slots=slots,
        max_queue=params.conversations,
        fake_tokens_per_s=100.0,
        worker_args=("--ignore-eos", "on", "--fake-prefill-tokens-per-s", "2000"),
        router_args=("--policy", policy),
    )
    shape = replace(params.shape(True), conversations=params.fake_workers * slots)
    async with Stack(config) as stack:
        turns, wall_s = await drive([stack.router_url], config.model_id, shape)
    figures = summary(turns, wall_s)
    logger.info("fake workers, %s: p50 TTFT %.0f ms, hit rate %.2f", policy,
                figures["p50_ttft_ms"] or 0, figures["hit_rate"] or 0)  # fmt: skip
    return {"workload": "fake", "policy": policy, "routers": 1, **figures}


async def run(params: Params) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = []
    for r in range(params.rounds):
        order = POLICIES if r % 2 == 0 else tuple(reversed(POLICIES))
        for shared in (True, False) if params.control else (True,):
            for arm in (NO_HOST_CACHE, *order) if shared and params.baseline else order:
                runs.append({"round": r, **await one_run(params, arm, shared, 1)})
        if params.replicas and nginx.available():  # one replica's run is above
            runs.append({"round": r, **await one_run(params, "cache-aware", True, 2)})
        for policy in order if params.fake_workers else ():
            runs.append({"round": r, **await fake_run(params, policy)})
    return runs


def medians(runs: list[dict[str, Any]], workload: str, policy: str, routers: int) -> dict[str, Any]:
    picked = [
        r for r in runs if (r["workload"], r["policy"], r["routers"]) == (workload, policy, routers)
    ]
    out: dict[str, Any] = {"runs": len(picked), "errors": sum(r["errors"] for r in picked)}
    for name in FIGURES:
        values = [r[name] for r in picked if r[name] is not None]
        out[name] = statistics.median(values) if values else None
        out[name + "_range"] = (min(values), max(values)) if values else None
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def _versus(base: dict[str, Any], aware: dict[str, Any]) -> dict[str, float | None]:
    """How much better `aware` did than `base`: TTFT lower by, throughput times."""
    return {
        "p50_ttft_lower_x": _ratio(base["p50_ttft_ms"], aware["p50_ttft_ms"]),
        "p99_ttft_lower_x": _ratio(base["p99_ttft_ms"], aware["p99_ttft_ms"]),
        "throughput_x": _ratio(aware["output_tokens_per_s"], base["output_tokens_per_s"]),
    }


def comparisons(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's targets as ratios of medians."""
    out: dict[str, Any] = {}
    for workload in ("shared", "control"):
        base = medians(runs, workload, "least-loaded", 1)
        aware = medians(runs, workload, "cache-aware", 1)
        out[workload] = {"least-loaded": base, "cache-aware": aware, **_versus(base, aware)}
    bare = medians(runs, "shared", NO_HOST_CACHE, 1)
    if bare["runs"]:
        aware = out["shared"]["cache-aware"]
        out["no_host_cache"] = {"least-loaded": bare, **_versus(bare, aware)}
    fake = {policy: medians(runs, "fake", policy, 1) for policy in POLICIES}
    if fake["least-loaded"]["runs"]:
        out["fake"] = {**fake, **_versus(fake["least-loaded"], fake["cache-aware"])}
    two = medians(runs, "shared", "cache-aware", 2)
    if two["runs"]:
        out["replicas"] = {
            "two": two,
            "hit_rate_x": _ratio(two["hit_rate"], out["shared"]["cache-aware"]["hit_rate"]),
        }
    return out


def render_markdown(data: dict[str, Any]) -> str:
    p, c = data["parameters"], data["comparisons"]
    lines = [
        "### Cache-aware routing: multi-turn conversations",
        "",
        f"Default model, batched engine, {p['workers']} workers x {p['slots']} slots "
        f"(--n-threads {p['n_threads']}), {p['conversations']} concurrent conversations x "
        f"{p['turns']} turns, replies of exactly {p['max_tokens']} tokens (--ignore-eos), "
        f"{p['rounds']} interleaved rounds (medians, range in brackets). "
        f"{header_line(data['metadata'])}",
        "",
        "| Workload | Policy | p50 TTFT | p99 TTFT | Output tok/s | Hit rate | Errors |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    rows = (
        [("shared", NO_HOST_CACHE, c["no_host_cache"]["least-loaded"])]
        if "no_host_cache" in c
        else []
    )
    rows += [(w, policy, c[w][policy]) for w in ("shared", "control") for policy in POLICIES]
    if "replicas" in c:
        rows.append(("shared", "cache-aware, 2 replicas (nginx)", c["replicas"]["two"]))
    if "fake" in c:
        fake_label = f"{p['fake_workers']} fake workers x {p['slots']} slots"
        rows += [(fake_label, policy, c["fake"][policy]) for policy in POLICIES]
    for workload, label, m in rows:
        lines.append(
            f"| {workload} | {label} | {_cell(m, 'p50_ttft_ms', ' ms')} "
            f"| {_cell(m, 'p99_ttft_ms', ' ms')} | {_cell(m, 'output_tokens_per_s', '')} "
            f"| {_cell(m, 'hit_rate', '', 2)} | {m['errors']} |"
        )
    lines += ["", "Ratios (cache-aware over least-loaded, medians):", ""]
    ratio_lines = [(w, c[w]) for w in ("shared", "control")]
    if "no_host_cache" in c:
        label = "shared, against least-loaded on workers without the host cache"
        ratio_lines.append((label, c["no_host_cache"]))
    if "fake" in c:
        label = f"routing alone ({p['fake_workers']} fake workers, as many conversations as slots)"
        ratio_lines.append((label, c["fake"]))
    for label, w in ratio_lines:
        lines.append(
            f"- {label}: p50 TTFT {report.fmt_num(w['p50_ttft_lower_x'], 2)}x lower, p99 TTFT "
            f"{report.fmt_num(w['p99_ttft_lower_x'], 2)}x lower, output throughput "
            f"{report.fmt_num(w['throughput_x'], 2)}x"
        )
    if "replicas" in c:
        lines.append(
            "- two replicas behind nginx: hit rate "
            f"{report.fmt_num(c['replicas']['hit_rate_x'], 2)}x that of one"
        )
    return "\n".join(lines) + "\n"


def _cell(m: dict[str, Any], name: str, unit: str, digits: int = 0) -> str:
    value, span = m[name], m[name + "_range"]
    if value is None:
        return "-"
    text = f"{value:.{digits}f}{unit}"
    if span and m["runs"] > 1:
        text += f" [{span[0]:.{digits}f}-{span[1]:.{digits}f}]"
    return text


CLI = Cli(
    Params,
    "python -m benchmarks prefix_cache",
    "Cache-aware routing against least-loaded on multi-turn conversations.",
)


def main(argv: list[str] | None = None) -> int:
    params, args, argv = CLI.parse(argv)
    if args.smoke:
        params = replace(params, rounds=1, conversations=4, turns=2, system_words=60, max_tokens=4)
    metadata = run_metadata(["python", "-m", "benchmarks", "prefix_cache", *argv], args.smoke)
    runs = run_scenario(run(params))
    if runs is None:
        return 130
    data: dict[str, Any] = {
        "scenario": "prefix_cache",
        "metadata": metadata,
        "parameters": asdict(params),
        "runs": runs,
        "comparisons": comparisons(runs),
    }
    write_report(args.out, "prefix_cache", data, render_markdown(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
