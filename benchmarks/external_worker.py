"""The router in front of two stock `llama-server` processes (each registered by worker.agent)
against the same router in front of two of our batched workers: same model, slots and load.

    python -m benchmarks.external_worker [--server-bin PATH] [--slots 2] [--threads 1] \\
        [--max-tokens 32] [--rounds 2] [--concurrency 1,4]

`llama-server` is built from the llama.cpp sources llama-cpp-python vendors (see
benchmarks.llama_server); LLAMA_SERVER_BIN or --server-bin names it. Streamed, greedy chat
requests through the router (benchmarks.batched's prompts and closed loop), failed requests
counted, not dropped. Writes benchmarks/results/external_worker.{json,md}.

The process helpers here (`llama_server_service`, `agent_service`) are also the integration
tests' (tests/integration/test_external_worker.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.batched.loop import HTTP_MODEL_ID
from benchmarks.batched.report import machine_info
from benchmarks.flags import option, params_from, scenario_parser
from benchmarks.llama_server import counted_levels, report_head
from benchmarks.processes import MODEL_PATH, HttpService, free_port, router_sees, wait_until
from benchmarks.stack import Stack, StackConfig
from worker.config import resolve_model_path

DEFAULT_SERVER_BIN = (
    "/root/.cache/xero/llama_cpp_python-0.3.36/vendor/llama.cpp/build/bin/llama-server"
)
DESCRIPTION = "The router over two llama-servers against the router over two of our workers."


def llama_server_bin() -> str | None:
    """$LLAMA_SERVER_BIN, else the default build's path; None if no such executable."""
    path = os.environ.get("LLAMA_SERVER_BIN") or DEFAULT_SERVER_BIN
    return path if os.path.isfile(path) and os.access(path, os.X_OK) else None


def llama_server_service(
    log_dir: Path,
    name: str,
    server_bin: str,
    *,
    slots: int,
    n_ctx: int,
    threads: int = 1,
    model: str = MODEL_PATH,
    api_key_file: Path | None = None,
) -> HttpService:
    """A llama-server on loopback: `slots` slots of `n_ctx` tokens each, /metrics on."""
    port = free_port()
    argv = [
        server_bin, "-m", resolve_model_path(model), "--host", "127.0.0.1", "--port", str(port),
        "-np", str(slots), "-c", str(n_ctx * slots), "--threads", str(threads),
        "--no-webui", "--metrics",
    ]  # fmt: skip
    if api_key_file is not None:
        argv += ["--api-key-file", str(api_key_file)]
    return HttpService(name, argv, log_dir / f"{name}.log", port)


def agent_service(
    log_dir: Path,
    name: str,
    upstream: str,
    redis_url: str,
    *,
    model_id: str,
    options: Sequence[str] = (),
) -> HttpService:
    """`python -m worker.agent` for `upstream` (its port is the upstream's, for the record)."""
    argv = [
        sys.executable, "-m", "worker.agent", "--upstream", upstream, "--model-id", model_id,
        "--redis-url", redis_url, "--worker-id", name, "--log-level", "WARNING", *options,
    ]  # fmt: skip
    return HttpService(name, argv, log_dir / f"{name}.log", 0)


@dataclass(frozen=True, slots=True)
class Params:
    server_bin: str = field(default="", metadata=option("llama-server; default LLAMA_SERVER_BIN"))
    model: str = field(default=MODEL_PATH, metadata=option())
    slots: int = field(default=2, metadata=option())
    threads: int = field(default=1, metadata=option())
    n_ctx: int = field(default=1024, metadata=option())
    max_tokens: int = field(default=32, metadata=option())
    rounds: int = field(default=2, metadata=option())
    concurrency: tuple[int, ...] = field(default=(1, 4), metadata=option())
    out: str = field(default="benchmarks/results", metadata=option())


async def _run_side(args: Params, external: bool) -> list[dict[str, Any]]:
    worker_args = (
        "--engine", "batched", "--slots", str(args.slots), "--model-path", args.model,
        "--n-ctx", str(args.n_ctx), "--n-threads", str(args.threads), "--log-level", "WARNING",
    )  # fmt: skip
    stack = Stack(StackConfig(model_id=HTTP_MODEL_ID, workers=0, start_timeout_s=180,
                              worker_args=worker_args))  # fmt: skip
    servers: list[HttpService] = []
    try:
        await stack.start_redis()
        if external:
            await _start_llama_servers(stack, args, servers)
        else:
            await stack.add_workers(2)
        router = await stack.start_router()
        await asyncio.to_thread(
            wait_until, lambda: router_sees(router.url, 2), 60, "the router to see both"
        )
        url = router.url + "/v1/chat/completions"
        rounds, levels = args.rounds, args.concurrency
        return await counted_levels(url, args.max_tokens, rounds, levels, args.slots * 2)
    finally:
        for proc in reversed(servers):
            await asyncio.to_thread(proc.stop, 10)
        await stack.stop()


async def _start_llama_servers(stack: Stack, args: Params, started: list[HttpService]) -> None:
    """Two llama-servers, each with its agent, added to `started` as they start."""
    for i in range(2):
        server = llama_server_service(
            stack.log_dir, f"llama-server{i}", args.server_bin, slots=args.slots,
            n_ctx=args.n_ctx, threads=args.threads, model=args.model,
        )  # fmt: skip
        agent = agent_service(stack.log_dir, f"agent{i}", server.url, stack.redis_url,
                              model_id=HTTP_MODEL_ID)  # fmt: skip
        started.append(server)
        await asyncio.to_thread(server.start)
        await asyncio.to_thread(server.wait_healthy, 120)
        started.append(agent)
        await asyncio.to_thread(agent.start)


def render(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        "### The router over two llama-servers vs over two of our batched workers",
        "",
        f"{m['cpu_model']}, {m['nproc']} CPUs; {report['date']}, revision "
        f"{report['git_revision']}. Two upstreams of {report['slots']} slots each, "
        f"{report['threads']} thread each, {report['n_ctx']} tokens of context per slot, greedy, "
        f"max_tokens {report['max_tokens']}, {report['rounds']} requests per client, streamed "
        f"through one router. Command: `{report['command']}`. Above "
        f"{2 * report['slots']} clients, requests wait in the router's admission queue, and "
        "TTFT includes that wait. Failed requests are counted, not dropped.",
        "",
        "| C | Ours tokens/s | llama-server tokens/s | Ours TTFT mean | llama-server TTFT mean "
        "| Ours errors | llama-server errors |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for ours, theirs in zip(report["ours"], report["llama-server"], strict=True):
        lines.append(
            f"| {ours['concurrency']} | {ours['tokens_per_s']:,.1f} | "
            f"{theirs['tokens_per_s']:,.1f} | {ours['ttft_mean_ms']:.0f} ms | "
            f"{theirs['ttft_mean_ms']:.0f} ms | {ours['errors']} | {theirs['errors']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = scenario_parser(Params, "python -m benchmarks.external_worker", DESCRIPTION, extras=())
    args = params_from(Params, parser.parse_args(argv))
    server_bin = args.server_bin or llama_server_bin()
    if not server_bin:
        print("no llama-server: set LLAMA_SERVER_BIN or --server-bin", file=sys.stderr)
        return 2
    args = Params(**{**{f: getattr(args, f) for f in Params.__dataclass_fields__},
                     "server_bin": server_bin})  # fmt: skip
    machine = machine_info(0)
    ours = asyncio.run(_run_side(args, external=False))
    theirs = asyncio.run(_run_side(args, external=True))
    report: dict[str, Any] = {
        **report_head("python -m benchmarks.external_worker", machine),
        "slots": args.slots,
        "threads": args.threads,
        "n_ctx": args.n_ctx,
        "max_tokens": args.max_tokens,
        "rounds": args.rounds,
        "ours": ours,
        "llama-server": theirs,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "external_worker.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "external_worker.md").write_text(render(report))
    print(render(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
