"""The --http part: each engine behind a real worker process, driven through its chat API."""

from __future__ import annotations

import aiohttp
import orjson

from benchmarks.batched.loop import (
    HTTP_MODEL_ID,
    WARM_UP_TOKENS,
    Level,
    Request,
    ask,
    closed_loop,
    progress,
    warm_up,
)
from benchmarks.batched.params import Options
from benchmarks.client import post_chat
from benchmarks.stack import Stack, StackConfig


async def run_http(opts: Options) -> dict[str, list[Level]]:
    """Each engine behind a real worker process (plus redis-server for its registry)."""
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
                await warm_up(http_request(session, url, WARM_UP_TOKENS), max(opts.concurrency))
                request = http_request(session, url, opts.max_tokens)
                results[name] = []
                for c in opts.concurrency:
                    level = await closed_loop(request, c, opts.rounds)
                    results[name].append(level)
                    progress(f"http   {name:7} C={c:2}: {level}")
        finally:
            await stack.stop()
    return results


def http_request(session: aiohttp.ClientSession, url: str, max_tokens: int) -> Request:
    """A streamed, greedy chat request with usage, through benchmarks.client's reader."""
    headers = {"Content-Type": "application/json"}

    async def request(subject: str) -> tuple[int, float]:
        body = {
            "model": HTTP_MODEL_ID,
            "messages": [{"role": m.role, "content": m.content} for m in ask(subject)],
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        done = await post_chat(session, url, orjson.dumps(body), headers, stream=True)
        if not done.ok:
            raise RuntimeError(f"{url} answered {done.status}: {done.error}")
        ttft_s = done.e2e_s if done.ttft_s is None else done.ttft_s
        return done.completion_tokens or 0, ttft_s

    return request
