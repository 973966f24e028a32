"""The engine-level part: LlamaEngine and BatchedLlamaEngine called from asyncio in this process,
and the bare loop (benchmarks/bare_loop.py) on the same model. Imports no aiohttp: it also runs
on the GPU machine."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

from benchmarks import bare_loop
from benchmarks.batched.loop import (
    SUBJECTS,
    WARM_UP_TOKENS,
    Level,
    Request,
    ask,
    closed_loop,
    progress,
    warm_up,
)
from benchmarks.batched.params import Options
from contract.wire import SamplingParams
from worker.batched_engine import BatchedLlamaEngine, ChatPrompt, LoadedModel
from worker.engine import Engine, Finished
from worker.llama_engine import LlamaEngine


def engine_request(engine: Engine, params: SamplingParams) -> Request:
    gate = asyncio.Semaphore(engine.slots)  # the worker's admission: at most `slots` streams

    async def request(subject: str) -> tuple[int, float]:
        start = time.perf_counter()  # queueing for a slot included
        first: float | None = None
        tokens = 0
        async with gate:
            async for item in engine.stream(ask(subject), params):
                if isinstance(item, Finished):
                    tokens += item.completion_tokens
                elif first is None and item:
                    first = time.perf_counter()
        return tokens, (first or time.perf_counter()) - start

    return request


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
        warm = engine_request(engine, replace(params, max_tokens=WARM_UP_TOKENS))
        await warm_up(warm, max(opts.concurrency))
        for c in opts.concurrency:
            level = await closed_loop(engine_request(engine, params), c, opts.rounds)
            results.append(level)
            progress(f"engine {name:7} C={c:2}: {level}")
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
            progress(f"bare loop      C={c:2}: {result}")
        return results
    finally:
        model.close()
