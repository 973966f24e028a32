"""Scenario: continuous batching against one sequence at a time and against the bare loop.

    python -m benchmarks.batched --model PATH [--n-gpu-layers 0] [--threads 2] [--http]
        [--concurrency 1,4,8,16] [--max-tokens 128] [--rounds 1] [--out DIR] [--label cpu]

Engines, each loaded once in a process of its own (as in the worker; see in_subprocess):
LlamaEngine (one sequence at a time: C clients queue for its one slot, as the worker's admission
makes them) and BatchedLlamaEngine (slots = the highest C). For each concurrency C, C clients
each send `rounds` requests back to back (closed loop), called engine-level (engine.stream from
asyncio, nothing else in the process): distinct "write a long story" prompts sharing a system
prompt, greedy, max_tokens M. Aggregate tokens/s = completion tokens (the engines'
usage) / wall time of the level; TTFT = request start to first text, queueing included.

Bare loop (benchmarks/bare_loop.py) on the same model, prompt length and token count:
decode-only tokens/s (the ceiling for steady generation, which the engine is held to although
its figure includes reading prompts) and end-to-end tokens/s with the whole prompt read first.
The engines keep each slot's KV as a prompt cache, so they read only what a prompt does not
share with the slot's previous one (here the system prompt and "Write a long story about").

--http (needs redis-server, aiohttp and redis): the same through the worker's API, a worker
started as `python -m worker --engine llama` and then `--engine batched --slots C_max`,
streamed with usage. The engine-level part imports only llama_cpp, numpy, jinja2 (the chat
template) and this project, so it also runs on the GPU machine.

Writes batched_<label>.json (command, revision, machine, parameters, figures) and .md to --out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import llama_cpp

from benchmarks import bare_loop
from contract.wire import Message
from worker.batched_engine import BatchedLlamaEngine, ChatPrompt, LoadedModel
from worker.config import ConfigError, resolve_model_path
from worker.engine import Engine, Finished, SamplingParams
from worker.llama_engine import LlamaEngine

REPO_ROOT = Path(__file__).resolve().parent.parent
SUBJECTS = (
    "a lighthouse keeper and a storm", "a dragon who collects teapots", "a lost robot in Paris",
    "two rival bakers in a small town", "a girl who can talk to birds", "a ship made of ice",
    "the last library on the moon", "a detective cat in London", "a village under a volcano",
    "a clockmaker and a stolen hour", "a pirate afraid of water", "a garden that grows music",
    "a train that never stops", "an astronaut and a whale", "a king who forgot his name",
    "a painter of storms",
)  # fmt: skip
SYSTEM = "You are a helpful assistant."
HTTP_MODEL_ID = "bench-model"
WARM_UP_TOKENS = 4


def ask(subject: str) -> list[Message]:
    return [Message("system", SYSTEM), Message("user", f"Write a long story about {subject}.")]


@dataclass(frozen=True, slots=True)
class Level:
    concurrency: int
    requests: int
    completion_tokens: int
    wall_s: float
    tokens_per_s: float
    ttft_mean_ms: float
    ttft_p50_ms: float
    ttft_max_ms: float

    @classmethod
    def of(cls, concurrency: int, tokens: int, wall_s: float, ttfts: list[float]) -> Level:
        return cls(
            concurrency=concurrency,
            requests=len(ttfts),
            completion_tokens=tokens,
            wall_s=round(wall_s, 3),
            tokens_per_s=round(tokens / wall_s, 2),
            ttft_mean_ms=round(statistics.fmean(ttfts) * 1e3, 1),
            ttft_p50_ms=round(statistics.median(ttfts) * 1e3, 1),
            ttft_max_ms=round(max(ttfts) * 1e3, 1),
        )


# One request: (subject) -> async iterator of (text or completion-token count) events.
Request = Callable[[str], AsyncIterator[str | int]]


async def closed_loop(request: Request, concurrency: int, rounds: int) -> Level:
    """`concurrency` clients, each sending `rounds` requests back to back."""
    ttfts: list[float] = []
    tokens = 0

    async def client(i: int) -> None:
        nonlocal tokens
        for r in range(rounds):
            subject = SUBJECTS[(i + r * concurrency) % len(SUBJECTS)]
            start = time.perf_counter()
            first: float | None = None
            async for event in request(subject):
                if isinstance(event, int):
                    tokens += event
                elif first is None and event:
                    first = time.perf_counter()
            ttfts.append((first or time.perf_counter()) - start)

    started = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(concurrency)))
    return Level.of(concurrency, tokens, time.perf_counter() - started, ttfts)


async def warm_up(request: Request, opts: Options) -> None:
    """Every slot serves a short request first, so that levels start in the steady state of a
    running server: first-use allocations done, and each slot's prompt cache holding a previous
    request (the shared system prompt), as LlamaEngine's one cache does."""
    await closed_loop(request, max(opts.concurrency), 1)


def engine_request(engine: Engine, params: SamplingParams) -> Request:
    gate = asyncio.Semaphore(engine.slots)  # the worker's admission: at most `slots` streams

    async def request(subject: str) -> AsyncIterator[str | int]:
        async with gate:
            async for item in engine.stream(ask(subject), params):
                yield item.completion_tokens if isinstance(item, Finished) else item

    return request


@dataclass(frozen=True, slots=True)
class Options:
    model: str
    n_gpu_layers: int
    threads: int | None
    concurrency: tuple[int, ...]
    max_tokens: int
    rounds: int
    n_ctx: int
    prefill_chunk: int
    kv_unified: bool
    engines: tuple[str, ...]
    bare: bool
    http: bool
    out: Path
    label: str
    git_rev: str | None
    part: str | None = None  # set in the child process that runs one part
    part_json: Path | None = None


async def run_engine(opts: Options, name: str) -> list[Level]:
    params = SamplingParams(max_tokens=opts.max_tokens, temperature=0.0)
    engine: Engine
    if name == "single":
        engine = LlamaEngine(
            opts.model, n_ctx=opts.n_ctx, n_gpu_layers=opts.n_gpu_layers, n_threads=opts.threads
        )
    else:
        engine = BatchedLlamaEngine(
            opts.model,
            n_ctx=opts.n_ctx,
            n_gpu_layers=opts.n_gpu_layers,
            n_threads=opts.threads,
            slots=max(opts.concurrency),
            prefill_chunk=opts.prefill_chunk,
            kv_unified=opts.kv_unified,
        )
    results: list[Level] = []
    await engine.load()
    try:
        await warm_up(engine_request(engine, replace(params, max_tokens=WARM_UP_TOKENS)), opts)
        for c in opts.concurrency:
            level = await closed_loop(engine_request(engine, params), c, opts.rounds)
            results.append(level)
            _progress(f"engine {name:7} C={c:2}: {level}")
    finally:
        await engine.close()
    return results


def run_bare(opts: Options) -> list[bare_loop.BareResult]:
    model = LoadedModel(opts.model, opts.n_gpu_layers)
    try:
        prompt = ChatPrompt(model.llm, opts.n_ctx).prompt_tokens(ask(SUBJECTS[0]))
        results = []
        for c in opts.concurrency:
            (result,) = bare_loop.run(
                model,
                seqs=[c],
                n_gen=opts.max_tokens,
                n_ctx=opts.n_ctx,
                n_threads=opts.threads,
                unified=opts.kv_unified,
                prompt=prompt,
            )
            results.append(result)
            _progress(f"bare loop      C={c:2}: {result}")
        return results
    finally:
        model.close()


async def run_http(opts: Options) -> dict[str, list[Level]]:
    """Each engine behind a real worker process (plus redis-server for its registry)."""
    import aiohttp

    from benchmarks.stack import Stack, StackConfig

    results: dict[str, list[Level]] = {}
    for name in opts.engines:
        engine_args = ["--engine", "llama"] if name == "single" else ["--engine", "batched"]
        if name == "batched":
            engine_args += ["--slots", str(max(opts.concurrency))]
        worker_args = (
            *engine_args,  # after the stack's own `--engine fake`: the last flag wins
            "--model-path", opts.model,
            "--n-ctx", str(opts.n_ctx),
            "--n-gpu-layers", str(opts.n_gpu_layers),
            "--log-level", "WARNING",
            *(["--n-threads", str(opts.threads)] if opts.threads else []),
        )  # fmt: skip
        stack = Stack(StackConfig(model_id=HTTP_MODEL_ID, workers=0, start_timeout_s=180,
                                  worker_args=worker_args))  # fmt: skip
        try:
            await stack.start_redis()
            (worker,) = await stack.add_workers(1)
            url = worker.url + "/v1/chat/completions"
            timeout = aiohttp.ClientTimeout(total=600)
            connector = aiohttp.TCPConnector(limit=max(opts.concurrency))
            async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
                await warm_up(http_request(session, url, WARM_UP_TOKENS), opts)
                request = http_request(session, url, opts.max_tokens)
                results[name] = []
                for c in opts.concurrency:
                    level = await closed_loop(request, c, opts.rounds)
                    results[name].append(level)
                    _progress(f"http   {name:7} C={c:2}: {level}")
        finally:
            await stack.stop()
    return results


def http_request(session: Any, url: str, max_tokens: int) -> Request:
    async def request(subject: str) -> AsyncIterator[str | int]:
        body = {
            "model": HTTP_MODEL_ID,
            "messages": [{"role": m.role, "content": m.content} for m in ask(subject)],
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        async with session.post(url, json=body) as resp:
            if resp.status != 200:
                raise RuntimeError(f"worker answered {resp.status}: {await resp.text()}")
            async for raw in resp.content:
                line = raw.strip()
                if not line.startswith(b"data: ") or line == b"data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    yield int(chunk["usage"]["completion_tokens"])
                for choice in chunk.get("choices", ()):
                    yield choice.get("delta", {}).get("content") or ""

    return request


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


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def parse_args(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="GGUF file, or pkg:<package>/<file>")
    parser.add_argument("--n-gpu-layers", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="default: llama.cpp's")
    parser.add_argument("--concurrency", default="1,4,8,16", help="comma-separated levels")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=1, help="requests per client and level")
    parser.add_argument("--n-ctx", type=int, default=1024, help="context per stream")
    parser.add_argument("--prefill-chunk", type=int, default=256)
    parser.add_argument("--kv-unified", action="store_true", help="batched: one shared KV cache")
    parser.add_argument("--engines", default="single,batched", help="single and/or batched")
    parser.add_argument("--no-bare", action="store_true", help="skip the bare loop")
    parser.add_argument("--http", action="store_true", help="also through worker processes")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results")
    parser.add_argument("--label", default="cpu", help="names the output files")
    parser.add_argument("--git-rev", default=None, help="default: asked of git")
    parser.add_argument("--part", choices=("bare", "single", "batched"), help=argparse.SUPPRESS)
    parser.add_argument("--part-json", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    engines = tuple(e for e in args.engines.split(",") if e)
    if not set(engines) <= {"single", "batched"}:
        parser.error("--engines: expected single and/or batched")
    try:
        model = resolve_model_path(args.model)
    except ConfigError as exc:
        parser.error(str(exc))
    return Options(
        model=model,
        n_gpu_layers=args.n_gpu_layers,
        threads=args.threads,
        concurrency=tuple(int(c) for c in args.concurrency.split(",")),
        max_tokens=args.max_tokens,
        rounds=args.rounds,
        n_ctx=args.n_ctx,
        prefill_chunk=args.prefill_chunk,
        kv_unified=args.kv_unified,
        engines=engines,
        bare=not args.no_bare,
        http=args.http,
        out=args.out,
        label=args.label,
        git_rev=args.git_rev,
        part=args.part,
        part_json=args.part_json,
    )


def run_part(opts: Options, part: str) -> list[dict[str, Any]]:
    if part == "bare":
        return [asdict(r) for r in run_bare(opts)]
    return [asdict(lv) for lv in asyncio.run(run_engine(opts, part))]


def in_subprocess(argv: list[str], part: str) -> list[dict[str, Any]]:
    """Each part in a process of its own, as each engine has in the worker: llama.cpp's OpenMP
    thread teams of several engines in one process slow each other down (libgomp stops spinning
    at its barriers once it has more threads than CPUs: 3x slower on 2 CPUs)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "part.json"
        args = [sys.executable, "-m", "benchmarks.batched", *argv, "--part", part]
        subprocess.run([*args, "--part-json", str(path)], check=True, timeout=3600)
        results: list[dict[str, Any]] = json.loads(path.read_text())
        return results


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    opts = parse_args(args)
    if opts.part is not None:
        assert opts.part_json is not None
        opts.part_json.write_text(json.dumps(run_part(opts, opts.part)))
        return 0
    command = shlex.join(["python", "-m", "benchmarks.batched", *args])
    machine = machine_info(opts.n_gpu_layers)
    started = time.monotonic()
    bare = in_subprocess(args, "bare") if opts.bare else None
    engine = {name: in_subprocess(args, name) for name in opts.engines}
    http = asyncio.run(run_http(opts)) if opts.http else None
    machine["loadavg_end"] = list(os.getloadavg())
    report: dict[str, Any] = {
        "scenario": "batched",
        "label": opts.label,
        "command": command,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_revision": opts.git_rev or git_revision(),
        "machine": machine,
        "parameters": {
            k: str(v) if isinstance(v, Path) else v
            for k, v in asdict(opts).items()
            if k not in ("part", "part_json")
        },
        "engine": engine,
        "bare": bare,
        "http": (
            {name: [asdict(lv) for lv in levels] for name, levels in http.items()}
            if http is not None
            else None
        ),
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    report["targets"] = targets(report)
    opts.out.mkdir(parents=True, exist_ok=True)
    stem = opts.out / f"batched_{opts.label}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    markdown = render_markdown(report)
    stem.with_suffix(".md").write_text(markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
