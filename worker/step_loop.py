"""The batched engine's inference thread: one step loop over every slot of one context.

See worker.batched_engine for the design (KV layout, two decodes a step, prompt chunks, slot
compaction, prompt caches) and worker.prefill for how steps are shared between prompts and
decodes. Everything here runs on that one thread, except `submit` and `stop`.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import logging
import queue
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import llama_cpp
import numpy as np
import numpy.typing as npt

from contract.wire import SamplingParams
from worker.engine import (
    EngineStopped,
    Failure,
    Finished,
    FinishReason,
    Item,
    UnsupportedFormat,
    completion_limit,
)
from worker.grammar import TokenCheck, new_grammar_sampler
from worker.kv_caches import KvCaches
from worker.llama_engine import ChatPrompt
from worker.llama_native import LoadedModel, new_sampler, put_token
from worker.logprobs import Logprobs, token_logprob
from worker.prefill import PromptsFirst
from worker.stops import StopMatcher

logger = logging.getLogger(__name__)

# A slot left free for this many steps is filled by moving the highest busy stream down. Sooner
# would be wasted: a closed loop refills a slot within a step or two, and moving a stream down
# overwrites the hole's prompt cache.
COMPACT_AFTER_STEPS = 8


@dataclass(eq=False, slots=True)
class Request:
    prompt: list[int]
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue[Item]
    cancelled: threading.Event = field(default_factory=threading.Event)
    digest: str | None = None  # contract.prefixes digest of the prompt's messages, if known


@dataclass(eq=False, slots=True)
class Generation:
    """A request holding a slot; touched only by the inference thread."""

    request: Request
    seq_id: int
    sampler: Any  # llama_sampler_p, freed on release; None: greedy, an argmax of the logits
    grammar: Any  # greedy with a grammar: the chain's grammar link, to vet the argmax with
    limit: int  # most completion tokens it may produce
    stops: StopMatcher
    decoder: codecs.IncrementalDecoder
    fed: int = 0  # prompt tokens in the KV cache
    cached: int = 0  # of them, reused from a prompt cache
    generated: list[int] = field(default_factory=list)  # sampled; all but the last decoded
    next_token: int | None = None  # sampled, to be decoded next step
    ready_s: float = 0.0  # when next_token was sampled (PromptsFirst's clock)
    completion_tokens: int = 0


@dataclass(frozen=True, slots=True)
class Layout:
    """How the loop uses its context: `slots` streams of `n_ctx` cells each."""

    n_ctx: int  # per stream
    slots: int
    prefill_chunk: int  # prompt tokens read per step, at most
    kv_unified: bool
    prompt_cache_bytes: int = 0  # host RAM for saved sequence states (not with kv_unified)
    ignore_eos: bool = False  # generate until the length limit


class StepLoop:
    def __init__(
        self,
        model: LoadedModel,
        chat: ChatPrompt,
        ctx: Any,
        batch: Any,
        layout: Layout,
        failure: Failure | None = None,
    ) -> None:
        self._model = model
        self._failure = failure if failure is not None else Failure()  # set if the loop dies
        self._chat = chat
        self._ctx = ctx
        self._batch = batch
        self._n_ctx = layout.n_ctx
        self._kv_unified = layout.kv_unified
        self._ignore_eos = layout.ignore_eos
        self._incoming: queue.SimpleQueue[Request | None] = queue.SimpleQueue()
        self._lock = threading.Lock()  # a request is queued before the loop stops, or refused
        self._stopped = False
        # Slot i holds sequence id i.
        self._waiting: deque[Request] = deque()
        self._by_id: list[Generation | None] = [None] * layout.slots
        # Free slots' KV streams are prompt caches; shared (unified) cells go back at once.
        self.caches = KvCaches(
            ctx, layout.slots, layout.prompt_cache_bytes, keep=not layout.kv_unified
        )
        self._freed_at = [0] * layout.slots  # step count when the slot was last freed
        self._steps = COMPACT_AFTER_STEPS
        self._outbox: list[tuple[Request, Item]] = []
        self._token_check = TokenCheck()
        self._policy = PromptsFirst(layout.prefill_chunk)

    def submit(self, request: Request) -> None:
        """Queue `request` (any thread); raise EngineStopped once the loop has stopped."""
        with self._lock:
            if self._stopped:
                raise EngineStopped()
            self._incoming.put(request)

    def stop(self) -> None:
        """Ask the loop to end (any thread); it fails whatever is still in flight."""
        self._incoming.put(None)

    def kv_cells_used(self) -> int:
        """Cells the slots hold: a busy one's prompt read so far and its tokens decoded (all
        sampled but the last), a free one's prompt cache. Any thread: list lengths only, no
        llama call, so a scrape may be one step behind."""
        return sum(
            self.caches.tokens(i) if seq is None else seq.fed + max(0, len(seq.generated) - 1)
            for i, seq in enumerate(self._by_id)
        )

    def run(self) -> None:
        """The inference thread: until stopped, take requests in, step, hand out what came."""
        try:
            while self._collect():
                self._schedule()
                if any(self._by_id):
                    self._step()
                self._post()
                self.caches.publish()
        except BaseException as exc:
            logger.exception("the batched engine's step loop failed")
            self._failure.set(f"the step loop failed: {exc!r}")
        finally:
            with self._lock:
                self._stopped = True
            self._fail_all(EngineStopped("The engine stopped."))

    def _busy(self) -> Iterator[Generation]:
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
        """Drop cancelled streams, admit waiting ones where their prompts are cached, close
        holes."""
        for seq in [s for s in self._busy() if s.request.cancelled.is_set()]:
            self._release(seq)
        while self._waiting and None in self._by_id:
            request = self._waiting.popleft()
            if request.cancelled.is_set():
                continue
            params = request.params
            try:
                sampler, grammar = self._sampler(params)
            except UnsupportedFormat as exc:
                self._send(request, exc)
                continue
            limit = completion_limit(self._n_ctx, len(request.prompt), params.max_tokens)
            free = [i for i, s in enumerate(self._by_id) if s is None]
            seq_id, fed = self.caches.place(request.prompt, request.digest, free)
            self._by_id[seq_id] = Generation(
                request=request,
                seq_id=seq_id,
                sampler=sampler,
                grammar=grammar,
                limit=limit,
                stops=StopMatcher(params.stop),
                decoder=codecs.getincrementaldecoder("utf-8")(errors="replace"),
                fed=fed,
                cached=fed,
            )
        self._compact()

    def _sampler(self, params: SamplingParams) -> tuple[Any, Any]:
        """The request's sampler chain, with a grammar for its response_format (converted
        once per schema, so at most once here per new schema); and for plain greedy decoding
        the grammar link alone, which `_decode` asks about the argmax first."""
        grammar = self._chat.grammar(params.response_format)
        link = None if grammar is None else new_grammar_sampler(self._model.vocab, grammar)
        chain = new_sampler(params, self._model.n_vocab, link)
        plain = params.temperature == 0 and not (
            params.presence_penalty or params.frequency_penalty or params.logit_bias
        )
        return chain, link if plain else None

    def _compact(self) -> None:
        old = self._steps - COMPACT_AFTER_STEPS
        while True:
            hole = next(
                (
                    i
                    for i, s in enumerate(self._by_id)
                    if s is None and self._freed_at[i] <= old and self.caches.movable(i)
                ),
                -1,
            )
            top = max((s.seq_id for s in self._busy()), default=-1)
            if not 0 <= hole < top:
                return
            seq = self._by_id[top]
            assert seq is not None
            self.caches.move(top, hole)
            self._by_id[top], self._by_id[hole] = None, seq
            seq.seq_id = hole
            logger.debug("moved the stream in slot %s down to slot %s", top, hole)

    def _step(self) -> None:
        """Prompt chunks first, their first tokens handed out at once; then the generating
        streams' tokens, once no prompt is due, or first if a chunk would make them wait too
        long (worker.prefill.PromptsFirst)."""
        self._steps += 1
        chunks = self._plan_chunks()
        if self._kv_unified:
            self._decode(self._generating(), chunks)
            return
        # Two calls, so that every prompt token is read in a ubatch of >= 2 tokens of its
        # stream, as in a single-sequence prefill (worker.batched_engine says why).
        ready = [s.ready_s for s in self._busy() if s.next_token is not None or _left(s) == 1]
        tokens = sum(size for _, size in chunks)
        decode_first = bool(ready) and self._policy.starved(min(ready, default=0.0), tokens)
        if decode_first:
            self._decode(self._generating(), [])
        if chunks:
            self._decode([], chunks)
            self._post()
        if not decode_first and not self._prompts_due() and (generating := self._generating()):
            self._decode(generating, [])

    def _generating(self) -> list[tuple[Generation, int, int]]:
        """(sequence, token, position) of each stream with a token to decode now."""
        generating: list[tuple[Generation, int, int]] = []
        for seq in self._busy():
            if seq.next_token is not None:
                generating.append((seq, seq.next_token, seq.fed + seq.completion_tokens - 1))
            elif _left(seq) == 1:  # a one-token prompt reads like a step
                generating.append((seq, seq.request.prompt[-1], seq.fed))
                seq.fed += 1
        return generating

    def _prompts_due(self) -> bool:
        """Whether the next step has prompt work: arrivals for a free slot, or prompts read
        only in part."""
        arrived = bool(self._waiting) or not self._incoming.empty()
        return (arrived and None in self._by_id) or any(
            seq.next_token is None and _left(seq) >= 2 for seq in self._busy()
        )

    def _plan_chunks(self) -> list[tuple[Generation, int]]:
        reading = [s for s in self._busy() if s.next_token is None and _left(s) >= 2]
        size, joining = self._policy.plan([_left(s) for s in reading])
        return [(reading[i], size) for i in joining]

    def _decode(
        self, generating: list[tuple[Generation, int, int]], chunks: list[tuple[Generation, int]]
    ) -> None:
        """One llama_decode, then sample every sequence that has a new row of logits."""
        batch = self._batch
        outputs: list[tuple[Generation, int]] = []
        n = 0
        for seq, token, pos in generating:
            put_token(batch, n, token, pos, seq.seq_id, True)
            outputs.append((seq, n))
            n += 1
        for seq, size in chunks:
            prompt = seq.request.prompt
            for pos in range(seq.fed, seq.fed + size):
                put_token(batch, n, prompt[pos], pos, seq.seq_id, pos == len(prompt) - 1)
                n += 1
            seq.fed += size
            if seq.fed == len(prompt):
                outputs.append((seq, n - 1))
        batch.n_tokens = n
        clock = self._policy.clock
        started_s = clock()
        status = llama_cpp.llama_decode(self._ctx, batch)
        ready_s = clock()
        if status != 0:
            # Cannot happen while every stream keeps to its own n_ctx cells: fail the streams
            # in this batch rather than the engine (their cells may hold a partial write).
            logger.error("llama_decode returned %s for %s tokens", status, n)
            for seq in [s for s, _, _ in generating] + [s for s, _ in chunks]:
                self._send(seq.request, RuntimeError(f"llama_decode failed ({status})"))
                self._release(seq, keep_cache=False)
            return
        if chunks:  # what prompt reads cost, for PromptsFirst
            self._policy.cost.observe(n, ready_s - started_s)
        for seq, index in outputs:
            seq.ready_s = ready_s
            token = self._sample(seq, index)
            top = seq.request.params.top_logprobs
            if top is not None and not llama_cpp.llama_vocab_is_eog(self._model.vocab, token):
                bias = seq.request.params.logit_bias
                entry = token_logprob(self._logits(index), token, top, self._chat.piece, bias)
                self._send(seq.request, Logprobs((entry,)))
            self._on_token(seq, token)

    def _sample(self, seq: Generation, index: int) -> int:
        if seq.sampler is None:  # what the greedy sampler picks, in a quarter of the time
            return self._argmax(index)
        if seq.grammar is not None and self._token_check.allows(
            seq.grammar, token := self._argmax(index)
        ):
            # The grammar allows the best token, so a masked argmax would pick it too; a
            # full pass over the vocabulary is needed only when it does not.
            llama_cpp.llama_sampler_accept(seq.sampler, token)
            return token
        return int(llama_cpp.llama_sampler_sample(seq.sampler, self._ctx, index))

    def _logits(self, index: int) -> npt.NDArray[np.float32]:
        """Output row `index`'s raw logits: a view, valid until the next decode."""
        row = llama_cpp.llama_get_logits_ith(self._ctx, index)
        return np.ctypeslib.as_array(row, shape=(self._model.n_vocab,))

    def _argmax(self, index: int) -> int:
        """The first highest logit of output row `index`, as llama.cpp's greedy sampler."""
        return int(self._logits(index).argmax())

    def _on_token(self, seq: Generation, token: int) -> None:
        seq.completion_tokens += 1  # an end-of-generation token too: it cost a decode step
        seq.generated.append(token)
        seq.next_token = None
        if not self._ignore_eos and llama_cpp.llama_vocab_is_eog(self._model.vocab, token):
            self._finish(seq, "stop")
            return
        text, stopped = seq.stops.feed(seq.decoder.decode(self._chat.piece(token)))
        if text:
            self._send(seq.request, text)
        if stopped:
            self._finish(seq, "stop", stop_hit=True)
        elif seq.completion_tokens >= seq.limit:
            self._finish(seq, "length")
        else:
            seq.next_token = token

    def _finish(self, seq: Generation, reason: FinishReason, *, stop_hit: bool = False) -> None:
        text = ""
        if not stop_hit:  # a trailing partial UTF-8 sequence, then a partial stop string
            text, stop_hit = seq.stops.feed(seq.decoder.decode(b"", final=True))
            if not stop_hit:
                text += seq.stops.flush()
        if text:
            self._send(seq.request, text)
        final: FinishReason = "stop" if stop_hit else reason
        prompt_tokens = len(seq.request.prompt)
        self._send(seq.request, Finished(final, prompt_tokens, seq.completion_tokens, seq.cached))
        self._release(seq)

    def _release(self, seq: Generation, *, keep_cache: bool = True) -> None:
        """Free the slot. Its own KV stream stays as the slot's prompt cache; shared (unified)
        cells go back at once."""
        held = seq.request.prompt[: seq.fed] + seq.generated[:-1] if keep_cache else None
        self.caches.release(seq.seq_id, held)
        if seq.sampler is not None:
            llama_cpp.llama_sampler_free(seq.sampler)
        self._by_id[seq.seq_id] = None
        self._freed_at[seq.seq_id] = self._steps

    def _send(self, request: Request, item: Item) -> None:
        self._outbox.append((request, item))

    def _post(self) -> None:
        """Hand this step's output to the event loops, one wake-up per loop."""
        if not self._outbox:
            return
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Request, Item]]] = {}
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


def _left(seq: Generation) -> int:
    """Prompt tokens still to read."""
    return len(seq.request.prompt) - seq.fed


def _deliver(items: list[tuple[Request, Item]]) -> None:
    for request, item in items:
        request.out.put_nowait(item)
