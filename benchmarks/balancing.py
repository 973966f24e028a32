"""Scenario: balancing quality. Least-loaded against round-robin and random on unequal workers.

    python -m benchmarks balancing [--duration-s 60] [--rounds 1] [--load-fraction 0.8]

Stack: redis, one router, fake-engine workers of unequal speed: by default two fast (200
tokens/s) and one four times slower (50 tokens/s), each with 4 slots and a 20 ms time to first
token. Every request streams a fixed 32 tokens, so a worker's capacity is
slots / (ttft + 31 / tokens_per_s) requests/s and the stack's is the sum (52 req/s by default).

Load: open loop, Poisson arrivals at `--load-fraction` of that capacity (80 %), the same seed,
hence the same arrival times and prompts, for every policy. Each policy gets a fresh stack (the
router's `--policy least-loaded|round-robin|random`); with `--rounds` > 1 the policies run in
rotated order each round and their requests are pooled. Reported per policy: the harness's
summary (TTFT, TPOT, E2E percentiles, throughput, errors) and each worker's share of the
completion tokens (from the workers' own /metrics). Target: least-loaded p99 E2E <= half of
round-robin's.

Writes balancing.json and balancing.md to --out (default benchmarks/results).
"""

from __future__ import annotations

import logging
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

from benchmarks import report
from benchmarks.client import Target
from benchmarks.flags import Cli, option
from benchmarks.meta import run_metadata
from benchmarks.metrics import RequestRecord, RunSummary, summarize
from benchmarks.runner import LevelResult, Load, Runner
from benchmarks.scenario import (
    header_line,
    prometheus_total,
    router_flags,
    run_scenario,
    scrape,
    write_report,
)
from benchmarks.stack import Stack, StackConfig
from benchmarks.workload import LengthDist, SyntheticWorkload

logger = logging.getLogger(__name__)

POLICIES = ("least-loaded", "round-robin", "random")
TARGET_RATIO = 0.5  # least-loaded p99 E2E <= this x round-robin's


@dataclass(frozen=True, slots=True)
class Params:
    duration_s: float = field(default=60.0, metadata=option("per policy, round"))
    rounds: int = field(default=1, metadata=option())
    load_fraction: float = field(default=0.8, metadata=option())
    burstiness: float = field(default=1.0, metadata=option())
    policies: tuple[str, ...] = field(default=POLICIES, metadata=option())
    fast_workers: int = field(default=2, metadata=option())
    slow_workers: int = field(default=1, metadata=option())
    fast_tokens_per_s: float = field(default=200.0, metadata=option())
    slow_tokens_per_s: float = field(default=50.0, metadata=option())
    slots: int = field(default=4, metadata=option())
    output_tokens: int = field(default=32, metadata=option())
    warmup_requests: int = field(default=20, metadata=option())
    seed: int = field(default=0, metadata=option())
    ttft_ms: float = 20.0
    max_queue: int = 64
    prompt_words: int = 32
    model_id: str = "bench-model"

    def __post_init__(self) -> None:
        if self.fast_workers < 0 or self.slow_workers < 0 or self.workers < 1:
            raise ValueError("need at least one worker")
        if not self.load_fraction > 0:
            raise ValueError(f"load fraction must be > 0, got {self.load_fraction}")
        if min(self.fast_tokens_per_s, self.slow_tokens_per_s) <= 0:
            raise ValueError("token rates must be > 0 (capacity is computed from them)")
        if self.duration_s <= 0 or self.rounds < 1 or self.output_tokens < 1:
            raise ValueError("duration, rounds and output tokens must be positive")
        unknown = set(self.policies) - set(POLICIES)
        if unknown:
            raise ValueError(f"unknown policies {sorted(unknown)}; known: {', '.join(POLICIES)}")

    @property
    def workers(self) -> int:
        return self.fast_workers + self.slow_workers

    def worker_capacity(self, tokens_per_s: float) -> float:
        """Requests/s one fake worker completes when always busy: slots / request time."""
        request_s = self.ttft_ms / 1e3 + (self.output_tokens - 1) / tokens_per_s
        return self.slots / request_s

    @property
    def capacity(self) -> float:
        return self.fast_workers * self.worker_capacity(
            self.fast_tokens_per_s
        ) + self.slow_workers * self.worker_capacity(self.slow_tokens_per_s)

    @property
    def rate(self) -> float:
        return self.load_fraction * self.capacity


def stack_config(params: Params, policy: str, pass_policy: bool) -> StackConfig:
    slow = ("--fake-tokens-per-s", f"{params.slow_tokens_per_s:g}")
    return StackConfig(
        model_id=params.model_id,
        workers=params.workers,
        fake_ttft_ms=params.ttft_ms,
        fake_tokens_per_s=params.fast_tokens_per_s,
        slots=params.slots,
        max_queue=params.max_queue,
        # Workers 0..fast-1 are fast; the rest slow.
        per_worker_args=((),) * params.fast_workers + (slow,) * params.slow_workers,
        router_args=("--policy", policy) if pass_policy else (),
    )


async def run_policy(
    params: Params, policy: str, pass_policy: bool, progress: bool
) -> tuple[LevelResult, list[float]]:
    """One policy on a fresh stack; its records and each worker's completion tokens."""
    async with Stack(stack_config(params, policy, pass_policy)) as stack:
        target = Target(base_urls=(stack.router_url,), model=params.model_id)
        workload = SyntheticWorkload(
            input_len=LengthDist("fixed", params.prompt_words),
            output_len=LengthDist("fixed", params.output_tokens),
            seed=params.seed,
        )
        load = Load(
            request_rate=params.rate,
            burstiness=params.burstiness,
            duration_s=params.duration_s,
            warmup_requests=params.warmup_requests,
            seed=params.seed,
        )
        async with Runner(target, workload, progress) as runner:
            result = await runner.run(load)
        tokens = [
            prometheus_total(await scrape(url), "worker_completion_tokens_total")
            for url in stack.worker_urls
        ]
    return result, tokens


async def run(params: Params, pass_policy: bool, progress: bool) -> dict[str, Any]:
    records: dict[str, list[RequestRecord]] = {p: [] for p in params.policies}
    duration: dict[str, float] = dict.fromkeys(params.policies, 0.0)
    tokens: dict[str, list[float]] = {p: [0.0] * params.workers for p in params.policies}
    for round_index in range(params.rounds):
        shift = round_index % len(params.policies)
        for policy in params.policies[shift:] + params.policies[:shift]:
            logger.info("round %d: %s at %.1f req/s", round_index + 1, policy, params.rate)
            result, worker_tokens = await run_policy(params, policy, pass_policy, progress)
            records[policy] += result.records
            duration[policy] += result.duration_s
            tokens[policy] = [a + b for a, b in zip(tokens[policy], worker_tokens, strict=True)]
    out: dict[str, Any] = {}
    for policy in params.policies:
        summary = summarize(records[policy], RunSummary(duration[policy]))
        total = sum(tokens[policy]) or 1.0
        summary["worker_token_share"] = [t / total for t in tokens[policy]]
        summary["slow_worker_share"] = sum(tokens[policy][params.fast_workers :]) / total
        out[policy] = summary
    return out


def verdict(policies: dict[str, Any]) -> dict[str, Any]:
    if "least-loaded" not in policies or "round-robin" not in policies:
        return {"ratio": None, "meets_target": None}
    ratio = policies["least-loaded"]["p99_e2el_ms"] / policies["round-robin"]["p99_e2el_ms"]
    return {"ratio": ratio, "meets_target": ratio <= TARGET_RATIO}


def render_markdown(data: dict[str, Any]) -> str:
    p = data["parameters"]
    v = data["verdict"]
    lines = [
        "### Balancing quality",
        "",
        f"{p['fast_workers']} fast fake workers ({p['fast_tokens_per_s']:g} tokens/s) and "
        f"{p['slow_workers']} slow ({p['slow_tokens_per_s']:g} tokens/s), {p['slots']} slots "
        f"each, TTFT {p['ttft_ms']:g} ms, {p['output_tokens']} output tokens per request: "
        f"capacity {data['capacity_rps']:.1f} req/s. Poisson arrivals at "
        f"{p['load_fraction']:.0%} of it ({data['rate_rps']:.1f} req/s), {p['duration_s']:g} s "
        f"x {p['rounds']} round(s) per policy, streaming, one router; same seed for every "
        f"policy. {header_line(data['metadata'])}",
        "",
        "| Policy | Completed | Req/s | p50 E2E | p90 E2E | p99 E2E | p99 TTFT | Slow worker's "
        "share | Errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for policy, s in data["policies"].items():
        lines.append(
            f"| {policy} | {s['completed']}/{s['num_requests']} "
            f"| {report.fmt_num(s['request_throughput'])} | {report.fmt_ms(s['p50_e2el_ms'])} ms "
            f"| {report.fmt_ms(s['p90_e2el_ms'])} ms | **{report.fmt_ms(s['p99_e2el_ms'])} ms** "
            f"| {report.fmt_ms(s['p99_ttft_ms'])} ms | {s['slow_worker_share']:.0%} "
            f"| {report.fmt_errors(s['errors'])} |"
        )
    fair = p["slow_workers"] * data["slow_capacity_rps"] / data["capacity_rps"]
    lines += [
        "",
        f"Slow worker's share: of all completion tokens, warm-up included (from the workers' "
        f"/metrics); "
        f"proportional to speed it would be {fair:.0%}.",
    ]
    if v["ratio"] is not None:
        lines.append(
            f"Least-loaded p99 E2E / round-robin p99 E2E = **{v['ratio']:.2f}** (target <= "
            f"{TARGET_RATIO}: {'met' if v['meets_target'] else 'not met'})."
        )
    return "\n".join(lines) + "\n"


CLI = Cli(
    Params,
    "python -m benchmarks balancing",
    "Least-loaded vs round-robin vs random on unequal fake workers.",
    ("out", "smoke", "progress"),
)


def main(argv: list[str] | None = None) -> int:
    params, args, argv = CLI.parse(argv)
    pass_policy = "--policy" in router_flags()
    if not pass_policy:
        if set(params.policies) != {"least-loaded"}:
            sys.stderr.write(
                "error: this router has no --policy flag; only --policies least-loaded (its "
                "built-in behaviour) can run\n"
            )
            return 2
        logger.warning("the router has no --policy flag; running its built-in least-loaded")
    metadata = run_metadata(["python", "-m", "benchmarks", "balancing", *argv], args.smoke)
    policies = run_scenario(run(params, pass_policy, not args.no_progress))
    if policies is None:
        return 130
    data: dict[str, Any] = {
        "scenario": "balancing",
        "metadata": metadata,
        "parameters": asdict(params),
        "capacity_rps": params.capacity,
        "slow_capacity_rps": params.worker_capacity(params.slow_tokens_per_s),
        "rate_rps": params.rate,
        "router_policy_flag": pass_policy,
        "policies": policies,
        "verdict": verdict(policies),
    }
    write_report(args.out, "balancing", data, render_markdown(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
