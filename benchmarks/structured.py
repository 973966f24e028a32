"""Decode speed under a response_format grammar against unconstrained, on the real model.

    python -m benchmarks.structured [--requests 4] [--max-tokens 200] [--threads 1]
                                    [--concurrency 8]

In this process (no router, no HTTP), greedy: the same story prompts (benchmarks.batched.loop)
free, with a JSON schema (`{"title", "story"}` strings, so the answer can run long) and with
`json_object`; on LlamaEngine one stream at a time, and on BatchedLlamaEngine one stream at a
time and `--concurrency` streams at once. Decode tokens/s: the tokens after each stream's first,
over the time from its first delta to its end (single stream), or all tokens over the wall time
(concurrent). Prints a table; writes nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence
from dataclasses import replace

from benchmarks.batched.loop import SUBJECTS
from benchmarks.processes import MODEL_PATH
from contract.formats import ResponseFormat, parse_response_format
from contract.wire import Message, SamplingParams
from worker.batched_engine import BatchedLlamaEngine
from worker.config import resolve_model_path
from worker.engine import Engine, Finished
from worker.llama_engine import LlamaEngine

SYSTEM = "You reply in JSON only."
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


async def run(args: argparse.Namespace) -> None:
    path = resolve_model_path(MODEL_PATH)
    engines: list[tuple[str, Engine, int]] = [
        ("llama", LlamaEngine(path, n_ctx=1024, n_gpu_layers=0, n_threads=args.threads), 1),
        ("batched", BatchedLlamaEngine(path, n_ctx=1024, n_threads=args.threads, slots=8), 1),
    ]
    engines.append(("batched", engines[1][1], args.concurrency))
    base = SamplingParams(max_tokens=args.max_tokens, temperature=0.0)
    print("| engine | streams | format | decode tok/s | vs free |")
    print("|---|---|---|---|---|")
    for name, engine, at_once in engines:
        if at_once == 1:
            await engine.load()
        await measure(engine, replace(base, max_tokens=8), 1, 1)  # warm up
        free = 0.0
        for label, fmt in FORMATS.items():
            rate = await measure(engine, replace(base, response_format=fmt), args.requests, at_once)
            free = free or rate
            print(f"| {name} | {at_once} | {label} | {rate:.1f} | {rate / free:.2f}x |")
        if at_once > 1 or name == "llama":
            await engine.close()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.structured")
    parser.add_argument("--requests", type=int, default=4, help="single-stream requests each")
    parser.add_argument("--max-tokens", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=8)
    asyncio.run(run(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
