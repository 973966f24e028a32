"""Continuous batching: up to `slots` chat streams share one llama.cpp model and one context.

    stream() ─ tokenise (thread pool) ─▶ incoming queue ─▶ inference thread: the step loop
       ▲                                                      │ llama_decode, sample, detokenise
       └──── asyncio.Queue ◀─ loop.call_soon_threadsafe ──────┘ (one wake-up per step and loop)

A step decodes the next token of every generating stream plus prompt chunks of newly admitted
ones, at most `prefill_chunk` prompt tokens a step, so a long prompt delays the others by one
chunk per step instead of stalling them for its whole length. Requests beyond `slots` wait in
arrival order. Sampling, usage, end of generation, stop strings and limits are LlamaEngine's.

KV layout (the documented split): `n_ctx * slots` cells, one llama.cpp KV stream of `n_ctx`
cells per slot (sequence id = slot), so each request gets the `n_ctx` LlamaEngine gives it and
the cache cannot run out. A stream's cells sit where a lone sequence's would, so attention sums
in the same order; and as llama.cpp's CPU attention takes another kernel for a one-token
ubatch, a step is TWO llama_decode calls when both kinds of work are due: the generating
tokens (one per stream, as in a single-sequence decode), then the prompt chunks (>= 2 tokens of
each stream per ubatch, as in a single-sequence prefill; see plan_chunks). llama.cpp would
split such a batch into those ubatches anyway. The result, on the CPU: each stream's output is
LlamaEngine's, token for token, greedy, seeded or penalised (tests/worker/
test_batched_engine.py). `kv_unified=True` shares all cells instead and decodes a step in one
call, with last-bit differences that can flip a near-tie and send greedy texts apart.

A batch over split streams is also split into one ubatch per run of consecutive ids, and each
ubatch reads the weights again: so a request takes the lowest free slot, and a slot left free
for COMPACT_AFTER_STEPS steps below a busy one is filled by moving the highest busy stream down
(llama_memory_seq_cp copies its stream before the next decode).

A finished or cancelled stream frees its slot in the step where that is seen; cancellation is
checked before every step, so generation stops at the next token. The slot's own stream keeps
its tokens as a prompt cache, which no other slot could use anyway: the next request admitted
there reads only what it does not share with them (llama_memory_seq_rm drops the rest), as
LlamaEngine reuses its one cache. With `kv_unified` the cells go back to the shared pool at once.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import ctypes
import logging
import queue
import threading
from collections import deque
from collections.abc import AsyncGenerator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import llama_cpp
import numpy as np

from contract.errors import InvalidRequest, ServiceUnavailable
from contract.wire import Message
from worker.engine import Finished, FinishReason, SamplingParams, context_exceeded
from worker.llama_engine import ChatPrompt
from worker.stops import StopMatcher

__all__ = ["BatchedLlamaEngine", "ChatPrompt", "LoadedModel", "new_context", "new_sampler"]

logger = logging.getLogger(__name__)

Item = str | Finished | BaseException

MAX_SEQ = 256  # LLAMA_MAX_SEQ
PENALTY_LAST_N = 64  # Llama's last_n_tokens_size, which LlamaEngine's penalties use
PIECE_BYTES = 256
# A slot left free for this many steps is filled by moving the highest busy stream down. Sooner
# would be wasted: a closed loop refills a slot within a step or two, and moving a stream down
# overwrites the hole's prompt cache.
COMPACT_AFTER_STEPS = 8


class LoadedModel:
    """A model loaded through `llama_cpp.Llama`, the one path seen working on the GPU machine
    (a bare llama_model_load_from_file crashed there). The Llama's own 32-cell context stays
    unused; its tokenizer and chat template feed LlamaEngine's prompt builder."""

    def __init__(self, path: str, n_gpu_layers: int) -> None:
        self.llm = llama_cpp.Llama(
            model_path=path, n_gpu_layers=n_gpu_layers, n_ctx=32, n_batch=32, verbose=False
        )
        self.model: Any = self.llm.model
        self.vocab: Any = llama_cpp.llama_model_get_vocab(self.model)
        self.n_vocab: int = llama_cpp.llama_vocab_n_tokens(self.vocab)

    def close(self) -> None:
        self.llm.close()


def new_context(
    model: LoadedModel,
    *,
    n_ctx: int,
    n_batch: int,
    n_seq_max: int,
    n_threads: int | None,
    unified: bool = False,
) -> Any:
    """A context of `n_ctx` KV cells for `n_seq_max` sequences: one stream of n_ctx/n_seq_max
    cells per sequence, or (`unified`) one cache any sequence may fill. Free with llama_free."""
    params = llama_cpp.llama_context_default_params()
    params.n_ctx = n_ctx
    params.n_batch = params.n_ubatch = n_batch
    params.n_seq_max = n_seq_max
    params.n_outputs_max = n_seq_max  # one sampled row per sequence a step, at most
    params.kv_unified = unified
    if n_threads is not None:
        params.n_threads = params.n_threads_batch = n_threads
    # As Llama(flash_attn=False), so that the arithmetic is LlamaEngine's.
    params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
    ctx = llama_cpp.llama_init_from_model(model.model, params)
    if ctx is None:
        raise RuntimeError(f"llama.cpp could not create a context of {n_ctx} cells")
    return ctx


@dataclass(eq=False, slots=True)
class _Request:
    prompt: list[int]
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue[Item]
    cancelled: threading.Event = field(default_factory=threading.Event)


@dataclass(eq=False, slots=True)
class _Sequence:
    """A request holding a slot; touched only by the inference thread."""

    request: _Request
    seq_id: int
    sampler: Any  # llama_sampler_p, freed on release; None: greedy, an argmax of the logits
    limit: int  # most completion tokens it may produce
    stops: StopMatcher
    decoder: codecs.IncrementalDecoder
    fed: int = 0  # prompt tokens in the KV cache
    generated: list[int] = field(default_factory=list)  # sampled; all but the last decoded
    next_token: int | None = None  # sampled, to be decoded next step
    completion_tokens: int = 0


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
    ) -> None:
        if not 1 <= slots <= MAX_SEQ:
            raise ValueError(f"slots must be 1..{MAX_SEQ}, got {slots}")
        if prefill_chunk < 8:
            raise ValueError(f"prefill_chunk must be >= 8, got {prefill_chunk}")
        self._path = model_path
        self._n_ctx = n_ctx  # per request
        self._n_gpu_layers = n_gpu_layers
        self._n_threads = n_threads
        self._slots = slots
        self._prefill_chunk = prefill_chunk
        self._kv_unified = kv_unified
        self._model: LoadedModel | None = None
        self._chat: ChatPrompt | None = None
        self._ctx: Any = None
        self._batch: Any = None
        self._thread: threading.Thread | None = None
        self._incoming: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self._closed = False
        self._lock = threading.Lock()  # a request is queued before the loop stops, or refused
        self._stopped = False
        # Inference-thread state: slot i holds sequence id i.
        self._waiting: deque[_Request] = deque()
        self._by_id: list[_Sequence | None] = [None] * slots
        self._cached: list[list[int]] = [[] for _ in range(slots)]  # a free slot's KV tokens
        self._freed_at = [0] * slots  # step count when the slot was last freed
        self._steps = COMPACT_AFTER_STEPS
        self._outbox: list[tuple[_Request, Item]] = []
        self._piece = ctypes.create_string_buffer(PIECE_BYTES)

    @property
    def n_ctx(self) -> int:
        return self._n_ctx

    @property
    def slots(self) -> int:
        return self._slots

    @property
    def device(self) -> str:
        gpu = self._n_gpu_layers != 0 and llama_cpp.llama_supports_gpu_offload()
        return "gpu" if gpu else "cpu"

    async def load(self) -> None:
        await asyncio.to_thread(self._load)
        self._thread = threading.Thread(target=self._run, name="batched-llama", daemon=True)
        self._thread.start()

    def _load(self) -> None:
        model = self._model = LoadedModel(self._path, self._n_gpu_layers)
        self._chat = ChatPrompt(model.llm, self._n_ctx)
        n_batch = self._prefill_chunk + self._slots
        self._ctx = new_context(
            model,
            n_ctx=self._n_ctx * self._slots,
            n_batch=n_batch,
            n_seq_max=self._slots,
            n_threads=self._n_threads,
            unified=self._kv_unified,
        )
        if llama_cpp.llama_n_ctx_seq(self._ctx) < self._n_ctx:  # llama.cpp rounds, up so far
            raise RuntimeError(f"llama.cpp gave fewer than {self._n_ctx} cells per sequence")
        self._batch = llama_cpp.llama_batch_init(n_batch, 0, 1)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # Stop the step loop (it fails whatever is still in flight), then free in reverse.
        if self._thread is not None:
            self._incoming.put(None)
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
        self, messages: Sequence[Message], params: SamplingParams
    ) -> AsyncGenerator[str | Finished, None]:
        chat = self._chat
        if chat is None or self._closed:
            raise ServiceUnavailable("The engine is not running.")
        prompt = await asyncio.to_thread(chat.prompt_tokens, messages)
        if len(prompt) >= self._n_ctx:
            raise context_exceeded(self._n_ctx, len(prompt))
        if not prompt:
            raise InvalidRequest("The messages rendered to an empty prompt.", param="messages")
        request = _Request(prompt, params, asyncio.get_running_loop(), asyncio.Queue())
        with self._lock:
            if self._stopped or self._closed:
                raise ServiceUnavailable("The engine is not running.")
            self._incoming.put(request)
        done = False
        try:
            while not done:
                item = await request.out.get()
                if isinstance(item, BaseException):
                    done = True
                    raise item
                done = isinstance(item, Finished)
                yield item
        finally:
            if not done:  # the consumer left: the step loop frees the slot before its next step
                request.cancelled.set()

    # ---- the inference thread ---------------------------------------------------------------

    def _run(self) -> None:
        try:
            while self._collect():
                self._schedule()
                if any(self._by_id):
                    self._step()
                self._post()
        except BaseException:
            logger.exception("the batched engine's step loop failed")
        finally:
            with self._lock:
                self._stopped = True
            self._fail_all(ServiceUnavailable("The engine stopped."))

    def _busy(self) -> Iterator[_Sequence]:
        return (seq for seq in self._by_id if seq is not None)

    def _collect(self) -> bool:
        """Move new requests to the waiting line, blocking only when idle. False: shut down."""
        block = not self._waiting and not any(self._by_id)
        while True:
            try:
                request = self._incoming.get(block=block)
            except queue.Empty:
                return True
            if request is None:
                return False
            self._waiting.append(request)
            block = False

    def _schedule(self) -> None:
        """Drop cancelled streams, admit waiting ones into the lowest free ids, close holes."""
        for seq in [s for s in self._busy() if s.request.cancelled.is_set()]:
            self._release(seq)
        assert self._model is not None
        while self._waiting and None in self._by_id:
            request = self._waiting.popleft()
            if request.cancelled.is_set():
                continue
            params = request.params
            limit = self._n_ctx - len(request.prompt)
            if params.max_tokens is not None:
                limit = min(limit, params.max_tokens)
            seq_id = self._by_id.index(None)
            self._by_id[seq_id] = _Sequence(
                request=request,
                seq_id=seq_id,
                sampler=new_sampler(params, self._model.n_vocab),
                limit=limit,
                stops=StopMatcher(params.stop),
                decoder=codecs.getincrementaldecoder("utf-8")(errors="replace"),
                fed=self._reuse(seq_id, request.prompt),
            )
        self._compact()

    def _reuse(self, seq_id: int, prompt: list[int]) -> int:
        """Keep the slot's cached prefix of `prompt` (up to all but 2 tokens, so the rest is
        read in a ubatch of >= 2 as a fresh prompt would be); drop the remainder."""
        cached, self._cached[seq_id] = self._cached[seq_id], []
        keep = 0
        for a, b in zip(cached, prompt[: max(0, len(prompt) - 2)], strict=False):
            if a != b:
                break
            keep += 1
        mem = llama_cpp.llama_get_memory(self._ctx)
        if keep < len(cached) and not llama_cpp.llama_memory_seq_rm(mem, seq_id, keep, -1):
            llama_cpp.llama_memory_seq_rm(mem, seq_id, -1, -1)  # never for a KV cache
            return 0
        return keep

    def _compact(self) -> None:
        mem = llama_cpp.llama_get_memory(self._ctx)
        old = self._steps - COMPACT_AFTER_STEPS
        while True:
            hole = next(
                (i for i, s in enumerate(self._by_id) if s is None and self._freed_at[i] <= old), -1
            )
            top = max((s.seq_id for s in self._busy()), default=-1)
            if not 0 <= hole < top:
                return
            seq = self._by_id[top]
            assert seq is not None
            llama_cpp.llama_memory_seq_cp(mem, top, hole, -1, -1)  # overwrites hole's cache
            llama_cpp.llama_memory_seq_rm(mem, top, -1, -1)
            self._cached[hole] = []
            self._by_id[top], self._by_id[hole] = None, seq
            seq.seq_id = hole
            logger.debug("moved the stream in slot %s down to slot %s", top, hole)

    def _step(self) -> None:
        self._steps += 1
        generating: list[tuple[_Sequence, int, int]] = []  # (sequence, token, position)
        reading: list[_Sequence] = []
        for seq in self._busy():
            if seq.next_token is not None:
                generating.append((seq, seq.next_token, seq.fed + seq.completion_tokens - 1))
            elif len(seq.request.prompt) - seq.fed == 1:  # a one-token prompt reads like a step
                generating.append((seq, seq.request.prompt[-1], seq.fed))
                seq.fed += 1
            else:
                reading.append(seq)
        chunks = self._plan_chunks(reading)
        if self._kv_unified:
            self._decode(generating, chunks)
        else:
            # Two calls: llama.cpp splits a batch over split streams into ubatches anyway, and
            # this keeps every prompt token in a ubatch of >= 2 tokens of its stream, as in a
            # single-sequence prefill (a 1-token ubatch takes another attention kernel on the
            # CPU, whose rounding differs).
            if generating:
                self._decode(generating, [])
            if chunks:
                self._decode([], chunks)

    def _plan_chunks(self, reading: list[_Sequence]) -> list[tuple[_Sequence, int]]:
        left = [len(s.request.prompt) - s.fed for s in reading]
        size, joining = plan_chunks(left, self._prefill_chunk)
        return [(reading[i], size) for i in joining]

    def _decode(
        self, generating: list[tuple[_Sequence, int, int]], chunks: list[tuple[_Sequence, int]]
    ) -> None:
        """One llama_decode, then sample every sequence that has a new row of logits."""
        batch = self._batch
        outputs: list[tuple[_Sequence, int]] = []
        n = 0
        for seq, token, pos in generating:
            _put(batch, n, token, pos, seq.seq_id, True)
            outputs.append((seq, n))
            n += 1
        for seq, size in chunks:
            prompt = seq.request.prompt
            for pos in range(seq.fed, seq.fed + size):
                _put(batch, n, prompt[pos], pos, seq.seq_id, pos == len(prompt) - 1)
                n += 1
            seq.fed += size
            if seq.fed == len(prompt):
                outputs.append((seq, n - 1))
        batch.n_tokens = n
        status = llama_cpp.llama_decode(self._ctx, batch)
        if status != 0:
            # Cannot happen while every stream keeps to its own n_ctx cells: fail the streams
            # in this batch rather than the engine (their cells may hold a partial write).
            logger.error("llama_decode returned %s for %s tokens", status, n)
            for seq in [s for s, _, _ in generating] + [s for s, _ in chunks]:
                self._send(seq.request, RuntimeError(f"llama_decode failed ({status})"))
                self._release(seq, keep_cache=False)
            return
        for seq, index in outputs:
            if seq.sampler is None:  # what the greedy sampler picks, in a quarter of the time
                row = llama_cpp.llama_get_logits_ith(self._ctx, index)
                assert self._model is not None
                token = int(np.ctypeslib.as_array(row, shape=(self._model.n_vocab,)).argmax())
            else:
                token = llama_cpp.llama_sampler_sample(seq.sampler, self._ctx, index)
            self._on_token(seq, token)

    def _on_token(self, seq: _Sequence, token: int) -> None:
        assert self._model is not None
        seq.completion_tokens += 1  # an end-of-generation token too: it cost a decode step
        seq.generated.append(token)
        seq.next_token = None
        if llama_cpp.llama_vocab_is_eog(self._model.vocab, token):
            self._finish(seq, "stop")
            return
        text, stopped = seq.stops.feed(seq.decoder.decode(self._piece_bytes(token)))
        if text:
            self._send(seq.request, text)
        if stopped:
            self._finish(seq, "stop", stop_hit=True)
        elif seq.completion_tokens >= seq.limit:
            self._finish(seq, "length")
        else:
            seq.next_token = token

    def _piece_bytes(self, token: int) -> bytes:
        assert self._model is not None
        vocab = self._model.vocab
        n = llama_cpp.llama_token_to_piece(vocab, token, self._piece, PIECE_BYTES, 0, False)
        if n < 0:  # longer than the buffer (rare): a one-off buffer of the right size
            big = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(vocab, token, big, -n, 0, False)
            return big.raw[:n]
        return self._piece.raw[:n]

    def _finish(self, seq: _Sequence, reason: FinishReason, *, stop_hit: bool = False) -> None:
        text = ""
        if not stop_hit:  # a trailing partial UTF-8 sequence, then a partial stop string
            text, stop_hit = seq.stops.feed(seq.decoder.decode(b"", final=True))
            if not stop_hit:
                text += seq.stops.flush()
        if text:
            self._send(seq.request, text)
        final: FinishReason = "stop" if stop_hit else reason
        self._send(seq.request, Finished(final, len(seq.request.prompt), seq.completion_tokens))
        self._release(seq)

    def _release(self, seq: _Sequence, *, keep_cache: bool = True) -> None:
        """Free the slot. Its own KV stream stays as the slot's prompt cache; shared (unified)
        cells go back at once."""
        if keep_cache and not self._kv_unified:
            self._cached[seq.seq_id] = seq.request.prompt[: seq.fed] + seq.generated[:-1]
        else:
            mem = llama_cpp.llama_get_memory(self._ctx)
            llama_cpp.llama_memory_seq_rm(mem, seq.seq_id, -1, -1)
        if seq.sampler is not None:
            llama_cpp.llama_sampler_free(seq.sampler)
        self._by_id[seq.seq_id] = None
        self._freed_at[seq.seq_id] = self._steps

    def _send(self, request: _Request, item: Item) -> None:
        self._outbox.append((request, item))

    def _post(self) -> None:
        """Hand this step's output to the event loops, one wake-up per loop."""
        if not self._outbox:
            return
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Request, Item]]] = {}
        for request, item in self._outbox:
            by_loop.setdefault(request.loop, []).append((request, item))
        self._outbox.clear()
        for loop, items in by_loop.items():
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody listens
                loop.call_soon_threadsafe(_deliver, items)

    def _fail_all(self, error: BaseException) -> None:
        for seq in list(self._busy()):
            self._send(seq.request, error)
            self._release(seq)
        while True:
            try:
                request = self._incoming.get_nowait()
            except queue.Empty:
                break
            if request is not None:
                self._waiting.append(request)
        for request in self._waiting:
            self._send(request, error)
        self._waiting.clear()
        self._post()


def plan_chunks(left: Sequence[int], budget: int) -> tuple[int, list[int]]:
    """One chunk size for this step's prompt reads, and which prompts (indices into `left`,
    their tokens still to read, each >= 2) read that many.

    One size, so that llama.cpp reads them in one ubatch (per run of consecutive ids) holding
    that many tokens of each stream, >= 2. A prompt joins when it has exactly `size` tokens left
    or `size` + 2 or more, never leaving a lone token for later; the others wait a step. The
    size is the one that reads the most tokens within the budget (>= 3)."""
    best = (0, 0, 0)  # (tokens, prompts, size)
    for size in set(left) | {n - 2 for n in left} | {budget // k for k in range(1, 17)}:
        if 2 <= size <= budget:
            joins = sum(1 for n in left if n == size or n >= size + 2)
            count = min(joins, budget // size)
            best = max(best, (size * count, count, size))
    _, count, size = best
    joining = [i for i, n in enumerate(left) if n == size or n >= size + 2]
    return size, joining[:count]


def _put(batch: Any, i: int, token: int, pos: int, seq_id: int, logits: bool) -> None:
    batch.token[i] = token
    batch.pos[i] = pos
    batch.n_seq_id[i] = 1
    batch.seq_id[i][0] = seq_id
    batch.logits[i] = logits


def _deliver(items: list[tuple[_Request, Item]]) -> None:
    for request, item in items:
        request.out.put_nowait(item)


def new_sampler(params: SamplingParams, n_vocab: int) -> Any:
    """LlamaEngine's sampler chain, less its no-op links; free with llama_sampler_free. None
    for plain greedy decoding, which needs no sampler (first highest logit, as llama.cpp's)."""
    if params.temperature == 0 and not (params.presence_penalty or params.frequency_penalty):
        return None
    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())

    def add(sampler: Any) -> None:
        llama_cpp.llama_sampler_chain_add(chain, sampler)

    if params.presence_penalty or params.frequency_penalty:
        penalties = llama_cpp.llama_sampler_init_penalties(
            n_vocab, PENALTY_LAST_N, 1.0, params.frequency_penalty, params.presence_penalty
        )
        add(penalties)
    if params.temperature == 0:
        add(llama_cpp.llama_sampler_init_greedy())
        return chain
    if params.top_p < 1:
        add(llama_cpp.llama_sampler_init_top_p(params.top_p, 1))
    add(llama_cpp.llama_sampler_init_temp(params.temperature))
    seed = llama_cpp.LLAMA_DEFAULT_SEED if params.seed is None else params.seed & 0xFFFFFFFF
    add(llama_cpp.llama_sampler_init_dist(seed))
    return chain
