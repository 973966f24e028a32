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

from benchmarks.batched.cli import main

__all__ = ["main"]
