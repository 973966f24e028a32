"""Continuous batching: up to `slots` chat streams share one llama.cpp model and one context.

    stream() ─ tokenise (thread pool) ─▶ incoming queue ─▶ inference thread: the step loop
       ▲                                                      │ llama_decode, sample, detokenise
       └──── asyncio.Queue ◀─ loop.call_soon_threadsafe ──────┘ (one wake-up per step and loop)

A step reads prompt chunks of newly admitted streams, at most `prefill_chunk` prompt tokens a
step, so a long prompt delays the others by one chunk per step instead of stalling them for its
whole length; hands out the first tokens that gives at once; then decodes the next token of
every generating stream. While prompts are due (a burst of requests), the decode waits for them,
at most as long as a full chunk would take, and they are read the shortest first, a few per call
where every token costs (worker.prefill). Requests beyond `slots` wait in arrival order.
Sampling, usage, end of generation, stop strings and limits are LlamaEngine's.

KV layout (the documented split): `n_ctx * slots` cells, one llama.cpp KV stream of `n_ctx`
cells per slot (sequence id = slot), so each request gets the `n_ctx` LlamaEngine gives it and
the cache cannot run out. A stream's cells sit where a lone sequence's would, so attention sums
in the same order; and as llama.cpp's CPU attention takes another kernel for a one-token
ubatch, a step is TWO llama_decode calls when both kinds of work are due: the prompt chunks
(>= 2 tokens of each stream per ubatch, as in a single-sequence prefill; see
worker.prefill.plan_chunks), then the generating tokens (one per stream, as in a single-sequence
decode). llama.cpp would split such a batch into those ubatches anyway. The result, on the
CPU: each stream's output is LlamaEngine's, token for token, greedy, seeded or penalised
(tests/worker/test_batched_engine.py). `kv_unified=True` shares all cells instead and decodes
a step in one call, with last-bit differences that can flip a near-tie and send greedy texts
apart.

A finished or cancelled stream frees its slot in the step where that is seen; cancellation is
checked before every step, so generation stops at the next token. The slot's own stream keeps
its tokens as a prompt cache. A new request takes the free slot whose cache shares the longest
prefix with its prompt (ties, often just the system prompt: the least recently used), and reads
only the rest (llama_memory_seq_rm drops the cache's other tokens), as LlamaEngine reuses its
one cache. Before a slot's cache is cut short, its KV state is copied to host RAM
(`prompt_cache_mib`, LRU; llama_state_seq_get_data, ~15 ms for 1,000 tokens here), and a
prompt whose longest cached prefix is there is restored into a slot (llama_state_seq_set_data
into any sequence id, ~4 ms) instead of being read again: so 16 conversations on 4 slots each
find their history at their next turn. worker.prompt_cache plans this, worker.kv_caches does it.
A restored stream holds the values a prefill would write, bit for bit, so outputs are unchanged.
With `kv_unified` the cells go back to the shared pool at once, and nothing is cached.

A batch over split streams is also split into one ubatch per run of consecutive ids, and each
ubatch reads the weights again: so a slot left free for COMPACT_AFTER_STEPS steps below a busy
one is filled by moving the highest busy stream down (llama_memory_seq_cp copies its stream
before the next decode), but only over a cache that is small or saved to host RAM first: a
ubatch a step costs far less than reading a conversation's history again. With the host cache
off (`prompt_cache_mib=0`), holes with a cache stay holes.

`cached_prefixes()` names what the slots and host cache hold for the heartbeat: each cache keeps
the contract.prefixes digest of the chat whose prompt it holds (worker.engine.Chat.prefix).
`ignore_eos` generates past end-of-generation tokens, up to the length limit (benchmarks).

Modules: this one is the event-loop side (load, close, stream); worker.step_loop the inference
thread, worker.prefill its share of steps between prompts and decodes; worker.llama_native the
llama.cpp calls both make.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

import llama_cpp

from contract.wire import SamplingParams
from worker.engine import (
    EngineStopped,
    Failure,
    OnPrompt,
    Output,
    Prompt,
    check_logit_bias,
    check_prompt,
    prompt_prefix,
    relay,
    with_default_length,
)
from worker.llama_engine import ChatPrompt
from worker.llama_native import MAX_SEQ, LoadedModel, new_context
from worker.step_loop import Layout, Request, StepLoop

# ChatPrompt, LoadedModel and new_context are re-exported for the benchmarks that drive them.
__all__ = ["BatchedLlamaEngine", "ChatPrompt", "LoadedModel", "new_context"]


class BatchedLlamaEngine:
    def __init__(
        self,
        model_path: str,
        *,
        n_ctx: int = 4096,
        n_gpu_layers: int = 0,
        n_threads: int | None = None,
        slots: int = 4,
        prefill_chunk: int = 256,
        kv_unified: bool = False,
        default_max_tokens: int | None = None,
        prompt_cache_mib: int = 256,
        ignore_eos: bool = False,
    ) -> None:
        if not 1 <= slots <= MAX_SEQ:
            raise ValueError(f"slots must be 1..{MAX_SEQ}, got {slots}")
        if prefill_chunk < 8:
            raise ValueError(f"prefill_chunk must be >= 8, got {prefill_chunk}")
        if prompt_cache_mib < 0:
            raise ValueError(f"prompt_cache_mib must be >= 0, got {prompt_cache_mib}")
        self._path = model_path
        self._layout = Layout(
            n_ctx=n_ctx,
            slots=slots,
            prefill_chunk=prefill_chunk,
            kv_unified=kv_unified,
            prompt_cache_bytes=prompt_cache_mib << 20,
            ignore_eos=ignore_eos,
        )
        self._n_gpu_layers = n_gpu_layers
        self._n_threads = n_threads
        self._default_max_tokens = default_max_tokens  # None: until end of generation
        self._model: LoadedModel | None = None
        self._chat: ChatPrompt | None = None
        self._ctx: Any = None
        self._batch: Any = None
        self._steps: StepLoop | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        self._failure = Failure()

    @property
    def n_ctx(self) -> int:
        return self._layout.n_ctx  # per request

    @property
    def slots(self) -> int:
        return self._layout.slots

    @property
    def failure(self) -> Failure:
        """Set when the step loop dies; the engine then refuses every stream."""
        return self._failure

    def kv_cells(self) -> tuple[int, int] | None:
        """(cells in use, cells in all), across the slots (StepLoop.kv_cells_used)."""
        steps, layout = self._steps, self._layout
        return None if steps is None else (steps.kv_cells_used(), layout.n_ctx * layout.slots)

    def cached_prefixes(self) -> tuple[str, ...]:
        """The contract.prefixes digests of the chats the slots and host cache hold, most
        recent first: a tuple the inference thread replaces, so safe from any thread."""
        steps = self._steps
        return () if steps is None else steps.caches.prefixes

    @property
    def device(self) -> str:
        gpu = self._n_gpu_layers != 0 and llama_cpp.llama_supports_gpu_offload()
        return "gpu" if gpu else "cpu"

    async def load(self) -> None:
        steps = self._steps = await asyncio.to_thread(self._load)
        self._thread = threading.Thread(target=steps.run, name="batched-llama", daemon=True)
        self._thread.start()

    def _load(self) -> StepLoop:
        layout = self._layout
        model = self._model = LoadedModel(self._path, self._n_gpu_layers)
        chat = self._chat = ChatPrompt(model.llm, layout.n_ctx)
        n_batch = layout.prefill_chunk + layout.slots
        self._ctx = new_context(
            model,
            n_ctx=layout.n_ctx * layout.slots,
            n_batch=n_batch,
            n_seq_max=layout.slots,
            n_threads=self._n_threads,
            unified=layout.kv_unified,
        )
        if llama_cpp.llama_n_ctx_seq(self._ctx) < layout.n_ctx:  # llama.cpp rounds, up so far
            raise RuntimeError(f"llama.cpp gave fewer than {layout.n_ctx} cells per sequence")
        self._batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        return StepLoop(model, chat, self._ctx, self._batch, layout, self._failure)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # Stop the step loop (it fails whatever is still in flight), then free in reverse.
        if self._steps is not None and self._thread is not None:
            self._steps.stop()
            await asyncio.to_thread(self._thread.join)
        await asyncio.to_thread(self._free)

    def _free(self) -> None:
        if self._batch is not None:
            llama_cpp.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx is not None:
            llama_cpp.llama_free(self._ctx)
            self._ctx = None
        if self._model is not None:
            self._model.close()
            self._model = self._chat = None

    async def stream(
        self, messages: Prompt, params: SamplingParams, on_prompt: OnPrompt | None = None
    ) -> AsyncGenerator[Output, None]:
        chat, steps, model = self._chat, self._steps, self._model
        if chat is None or steps is None or model is None or self._closed:
            raise EngineStopped()
        if self._failure.reason is not None:
            raise EngineStopped("The engine failed.")
        check_logit_bias(params, model.n_vocab)
        prompt = await asyncio.to_thread(chat.prompt_tokens, messages, params.tools)
        check_prompt(len(prompt), self.n_ctx)
        if on_prompt is not None:
            on_prompt(len(prompt))
        params = with_default_length(params, self._default_max_tokens)
        if params.response_format is not None:
            # Converted (or refused) here, off the inference thread; the step loop hits the cache.
            await asyncio.to_thread(chat.grammar, params.response_format)
        loop = asyncio.get_running_loop()
        request = Request(prompt, params, loop, asyncio.Queue(), digest=prompt_prefix(messages))
        if self._closed:
            raise EngineStopped()
        steps.submit(request)
        # A consumer that leaves sets `cancelled`: the loop frees the slot before its next step.
        async with aclosing(relay(request.out, request.cancelled)) as outputs:
            async for item in outputs:
                yield item
