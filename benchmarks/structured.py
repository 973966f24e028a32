"""Decode speed under a response_format grammar against unconstrained, on the real model.

    python -m benchmarks.structured [--requests 4] [--max-tokens 200] [--threads 1]
                                    [--concurrency 8] [--out DIR] [--smoke]

In this process (no router, no HTTP), greedy: the same story prompts (benchmarks.batched.loop)
free, with a JSON schema (`{"title", "story"}` strings, so the answer can run long) and with
`json_object`; on LlamaEngine one stream at a time, and on BatchedLlamaEngine one stream at a
time and `--concurrency` streams at once. Decode tokens/s: the tokens after each stream's first,
over the time from its first delta to its end (single stream), or all tokens over the wall time
(concurrent). Target (issue 11): constrained >= 0.8x unconstrained. Writes structured.json and
structured.md (command, revision, machine, date) to --out.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from benchmarks.batched.loop import SUBJECTS
from benchmarks.flags import Cli, option
from benchmarks.meta import run_metadata
from benchmarks.processes import MODEL_PATH
from benchmarks.scenario import header_line, run_scenario, write_report
from contract.formats import ResponseFormat, parse_response_format
from contract.wire import Message, SamplingParams
from worker.batched_engine import BatchedLlamaEngine
from worker.config import resolve_model_path
from worker.engine import Engine, Finished
from worker.llama_engine import LlamaEngine

SYSTEM = "You reply in JSON only."
TARGET = 0.8  # constrained decode tokens/s over unconstrained


@dataclass(frozen=True, slots=True)
class Params:
    requests: int = field(default=4, metadata=option("single-stream requests per format"))
    max_tokens: int = field(default=200, metadata=option())
    threads: int = field(default=1, metadata=option("llama.cpp threads"))
    concurrency: int = field(default=8, metadata=option("batched streams at once"))

    def __post_init__(self) -> None:
        if min(self.requests, self.max_tokens, self.threads, self.concurrency) < 1:
            raise ValueError("requests, max-tokens, threads and concurrency must be >= 1")


STORY = parse_response_format(
    {
        "type": "json_schema",
        "json_schema": {
            "name": "story",
            "schema": {
                "type": "object",
                "properties": {"title": {"type": "string"}, "story": {"type": "string"}},
                "required": ["title", "story"],
            },
        },
    }
)
FORMATS: dict[str, ResponseFormat | None] = {
    "free": None,
    "json_schema": STORY,
    "json_object": ResponseFormat("json_object"),
}


def ask(subject: str) -> list[Message]:
    return [Message("system", SYSTEM), Message("user", f"Write a long story about {subject}.")]


def decode_rate(streams: Sequence[tuple[int, float]]) -> float:
    """Tokens/s over (completion tokens, seconds from first delta to end) per stream; the
    first token of each is the prompt phase's."""
    tokens = sum(n - 1 for n, _ in streams)
    seconds = sum(s for _, s in streams)
    return tokens / seconds if seconds > 0 else 0.0


async def one(engine: Engine, subject: str, params: SamplingParams) -> tuple[int, float]:
    first: float | None = None
    async for item in engine.stream(ask(subject), params):
        if isinstance(item, Finished):
            return item.completion_tokens, time.perf_counter() - (first or time.perf_counter())
        if first is None and item:
            first = time.perf_counter()
    raise RuntimeError("no Finished")


async def measure(engine: Engine, params: SamplingParams, requests: int, at_once: int) -> float:
    subjects = [SUBJECTS[i % len(SUBJECTS)] for i in range(requests)]
    if at_once == 1:
        return decode_rate([await one(engine, s, params) for s in subjects])
    started = time.perf_counter()
    done = await asyncio.gather(*(one(engine, s, params) for s in subjects[:at_once]))
    return sum(n for n, _ in done) / (time.perf_counter() - started)


async def run(params: Params) -> list[dict[str, Any]]:
    path = resolve_model_path(MODEL_PATH)
    engines: list[tuple[str, Engine, int]] = [
        ("llama", LlamaEngine(path, n_ctx=1024, n_gpu_layers=0, n_threads=params.threads), 1),
        ("batched", BatchedLlamaEngine(path, n_ctx=1024, n_threads=params.threads, slots=8), 1),
    ]
    engines.append(("batched", engines[1][1], params.concurrency))
    base = SamplingParams(max_tokens=params.max_tokens, temperature=0.0)
    rows: list[dict[str, Any]] = []
    for name, engine, at_once in engines:
        if at_once == 1:
            await engine.load()
        await measure(engine, replace(base, max_tokens=8), 1, 1)  # warm up
        free = 0.0
        for label, fmt in FORMATS.items():
            requests = params.requests if at_once == 1 else at_once
            rate = await measure(engine, replace(base, response_format=fmt), requests, at_once)
            free = free or rate
            rows.append(
                {"engine": name, "streams": at_once, "format": label, "tokens_per_s": rate}
                | {"vs_free": rate / free if free else None}
            )
        if at_once > 1 or name == "llama":
            await engine.close()
    return rows


def render_markdown(data: dict[str, Any]) -> str:
    p = data["parameters"]
    lines = [
        "### Structured outputs: decode speed under a response_format grammar",
        "",
        f"SmolLM2-135M Q4_1 in process, greedy, {p['threads']} thread(s), up to {p['max_tokens']} "
        f"tokens, {p['requests']} requests per single-stream row; the batched engine also with "
        f"{p['concurrency']} streams at once. {header_line(data['metadata'])}",
        "",
        "| Engine | Streams | Format | Decode tokens/s | vs free | Target |",
        "|---|---:|---|---:|---:|---|",
    ]
    for r in data["rows"]:
        constrained = r["format"] != "free"
        met = ("met" if r["vs_free"] >= TARGET else "not met") if constrained else ""
        lines.append(
            f"| {r['engine']} | {r['streams']} | {r['format']} | {r['tokens_per_s']:.1f} | "
            f"{r['vs_free']:.2f}x | {met} |"
        )
    lines += [
        "",
        f"Target: constrained >= {TARGET}x unconstrained. LlamaEngine hands the grammar to "
        "llama-cpp-python's `Llama.generate`, which applies it to the whole vocabulary at every "
        "token; the batched engine asks the grammar about the argmax first and masks the "
        "vocabulary only when it refuses it.",
    ]
    return "\n".join(lines) + "\n"


CLI = Cli(
    Params,
    "python -m benchmarks.structured",
    "Decode tokens/s with a JSON grammar against unconstrained, in process.",
)


def main(argv: list[str] | None = None) -> int:
    params, args, argv = CLI.parse(argv)
    metadata = run_metadata(["python", "-m", "benchmarks.structured", *argv], args.smoke)
    rows = run_scenario(run(params))
    if rows is None:
        return 130
    data = {"scenario": "structured", "metadata": metadata, "parameters": asdict(params)}
    write_report(
        args.out, "structured", data | {"rows": rows}, render_markdown(data | {"rows": rows})
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
