"""Scenario: the real model. SmolLM2-135M on llama.cpp, 1 and 2 workers behind one router.

    python -m benchmarks real_model [--workers 1,2] [--concurrency 1,2,4,8] [--num-requests 32]

Stack: redis, one router, N llama-engine workers (`--engine llama`, one slot each, `--n-threads
1` each), all on this machine. Load: closed loop at each concurrency, streamed requests through
the router with `stream_options.include_usage` (token counts are the model's own), synthetic
prompts of `--prompt-words` words after a short system prompt, `max_tokens` `--max-tokens`
(short, so a full run takes a few minutes); the model may stop earlier at end of sequence, so
output tokens per request are reported too. Warm-up requests first at every level.

Reported per (workers, concurrency): requests/s, output tokens/s, TTFT, TPOT and E2E
percentiles, errors. Writes real_model.json, real_model.md, real_model.csv and
real_model.{latency,throughput}.png to --out (default benchmarks/results).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

from benchmarks import report
from benchmarks.client import Target
from benchmarks.flags import Cli, option
from benchmarks.meta import run_metadata
from benchmarks.metrics import DEFAULT_PERCENTILES, Slo
from benchmarks.processes import MODEL_ID, MODEL_PATH
from benchmarks.runner import Load, Runner
from benchmarks.scenario import header_line, run_scenario, write_report
from benchmarks.stack import Stack, StackConfig
from benchmarks.workload import LengthDist, SyntheticWorkload

logger = logging.getLogger(__name__)

SYSTEM_PROMPT = "Write a short story that uses the words the user gives."


@dataclass(frozen=True, slots=True)
class Params:
    workers: tuple[int, ...] = field(default=(1, 2), metadata=option("e.g. 1,2"))
    concurrencies: tuple[int, ...] = field(
        default=(1, 2, 4, 8), metadata=option("e.g. 1,2,4,8", flag="--concurrency")
    )
    num_requests: int = field(default=32, metadata=option("per level"))
    warmup_requests: int = field(default=2, metadata=option())
    prompt_words: int = field(default=32, metadata=option())
    max_tokens: int = field(default=32, metadata=option())
    n_threads: int = field(default=1, metadata=option())
    model_path: str = field(default=MODEL_PATH, metadata=option())
    model_id: str = field(default=MODEL_ID, metadata=option())
    seed: int = field(default=0, metadata=option())

    def __post_init__(self) -> None:
        if min(self.workers) < 1 or min(self.concurrencies) < 1:
            raise ValueError("workers and concurrency levels must be >= 1")
        if self.num_requests < 1 or self.max_tokens < 1 or self.prompt_words < 1:
            raise ValueError("num-requests, max-tokens and prompt-words must be >= 1")


async def run_workers(params: Params, workers: int, progress: bool) -> list[dict[str, Any]]:
    config = StackConfig(
        model_id=params.model_id,
        workers=workers,
        engine="llama",
        model_path=params.model_path,
        n_threads=params.n_threads,
        start_timeout_s=180.0,
    )
    workload = SyntheticWorkload(
        input_len=LengthDist("fixed", params.prompt_words),
        output_len=LengthDist("fixed", params.max_tokens),
        seed=params.seed,
        system_prompt=SYSTEM_PROMPT,
    )
    runs: list[dict[str, Any]] = []
    async with Stack(config) as stack:
        target = Target(base_urls=(stack.router_url,), model=params.model_id)
        async with Runner(target, workload, progress) as runner:
            for concurrency in params.concurrencies:
                load = Load(
                    concurrency=concurrency,
                    num_requests=params.num_requests,
                    warmup_requests=params.warmup_requests,
                    seed=params.seed,
                )
                result = await runner.run(load)
                run = {"workers": workers, **result.summary(Slo(), DEFAULT_PERCENTILES)}
                logger.info(
                    "%d worker(s), concurrency %d: %.2f req/s, %.1f tok/s, p50 TTFT %.0f ms",
                    workers,
                    concurrency,
                    run["request_throughput"],
                    run["output_throughput"],
                    run["p50_ttft_ms"],
                )
                runs.append(run)
    return runs


async def run(params: Params, progress: bool) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = []
    for workers in params.workers:
        runs += await run_workers(params, workers, progress)
    return runs


def render_markdown(data: dict[str, Any]) -> str:
    p = data["parameters"]
    lines = [
        "### The real model: SmolLM2-135M",
        "",
        f"`{p['model_path']}` on llama.cpp (llama-cpp-python), one slot and --n-threads "
        f"{p['n_threads']} per worker, one router; closed loop, streamed, {p['num_requests']} "
        f"requests per level after {p['warmup_requests']} warm-up, prompts of "
        f"{p['prompt_words']} words plus a one-line system prompt, max_tokens "
        f"{p['max_tokens']}. {header_line(data['metadata'])}",
        "",
        "| Workers | Concurrency | Req/s | Output tok/s | Tokens out/req | p50 TTFT | p99 TTFT "
        "| p50 TPOT | p50 E2E | p99 E2E | Errors |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in data["runs"]:
        per_request = r["total_output_tokens"] / r["completed"] if r["completed"] else None
        lines.append(
            f"| {r['workers']} | {r['concurrency']} | {report.fmt_num(r['request_throughput'], 2)}"
            f" | {report.fmt_num(r['output_throughput'])} | {report.fmt_num(per_request)} "
            f"| {report.fmt_ms(r['p50_ttft_ms'])} ms | {report.fmt_ms(r['p99_ttft_ms'])} ms "
            f"| {report.fmt_ms(r['p50_tpot_ms'])} ms | {report.fmt_ms(r['p50_e2el_ms'])} ms "
            f"| {report.fmt_ms(r['p99_e2el_ms'])} ms | {report.fmt_errors(r['errors'])} |"
        )
    lines += [
        "",
        "TTFT includes the wait for a free slot (one per worker), so it grows with concurrency "
        "once every slot is busy; TPOT is the decode speed a client sees.",
    ]
    return "\n".join(lines) + "\n"


CLI = Cli(
    Params,
    "python -m benchmarks real_model",
    "SmolLM2 on llama.cpp: throughput and TTFT against concurrency.",
    ("out", "smoke", "plots", "progress"),
)


def main(argv: list[str] | None = None) -> int:
    params, args, argv = CLI.parse(argv)
    metadata = run_metadata(["python", "-m", "benchmarks", "real_model", *argv], args.smoke)
    runs = run_scenario(run(params, not args.no_progress))
    if runs is None:
        return 130
    data: dict[str, Any] = {
        "scenario": "real_model",
        "metadata": metadata,
        "parameters": asdict(params),
        "runs": runs,
    }
    write_report(args.out, "real_model", data, render_markdown(data))
    (args.out / "real_model.csv").write_text(report.csv_text(runs))
    if not args.no_plots:
        series = [
            report.Series(f"{w} worker(s)", [r for r in runs if r["workers"] == w], "concurrency")
            for w in params.workers
        ]
        report.plot(args.out / "real_model", series, "SmolLM2-135M")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
