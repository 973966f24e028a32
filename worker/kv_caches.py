"""The batched engine's prompt caches on its context: the slots' KV streams and the host-RAM
copies, as worker.prompt_cache plans them, with the llama.cpp calls that carry the plans out.
Runs on the inference thread only, except `prefixes`, which any thread may read."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import llama_cpp

from worker.llama_native import restore_seq, save_seq
from worker.prompt_cache import (
    MIN_SAVE_TOKENS,
    Entry,
    HostCache,
    SlotCache,
    advertised,
    plan,
    worth_saving,
)

logger = logging.getLogger(__name__)


class KvCaches:
    def __init__(self, ctx: Any, slots: int, host_bytes: int, *, keep: bool = True) -> None:
        """`keep` False (kv_unified: freed cells go back to a shared pool) keeps no cache."""
        self._ctx = ctx
        self._keep = keep
        self._slots = [SlotCache() for _ in range(slots)]
        self.host = HostCache(host_bytes if keep else 0)
        self._tick = 0  # admissions and releases so far: the caches' LRU clock
        self._changed = False  # since `prefixes` was published
        # The digests the caches hold: replaced, never mutated, so any thread may read it.
        self.prefixes: tuple[str, ...] = ()

    def tokens(self, seq_id: int) -> int:
        """Cells a free slot's cache holds (any thread: a list length)."""
        return len(self._slots[seq_id].tokens)

    def place(self, prompt: list[int], digest: str | None, free: Sequence[int]) -> tuple[int, int]:
        """A slot among `free` for a prompt and how many of its tokens the slot now holds,
        from the longest cached prefix in a slot or (restored into one) in host RAM."""
        start = plan(prompt, [(i, self._slots[i]) for i in free], self.host)
        seq_id, keep = start.seq_id, start.keep
        if start.restore is not None:  # most recent first, so the save below cannot evict it
            self.host.touch(start.restore, self._tick)
        if start.save:
            self._save(seq_id)
        held = self._slots[seq_id].tokens
        if start.restore is not None:
            held = list(start.restore.tokens) if self._restore(seq_id, start.restore) else []
            keep = min(keep, len(held))
        mem = llama_cpp.llama_get_memory(self._ctx)
        if keep < len(held) and not llama_cpp.llama_memory_seq_rm(mem, seq_id, keep, -1):
            llama_cpp.llama_memory_seq_rm(mem, seq_id, -1, -1)  # never for a KV cache
            keep = 0
        self._tick += 1
        self._slots[seq_id] = SlotCache([], digest, self._tick)
        self._changed = True
        return seq_id, keep

    def release(self, seq_id: int, tokens: list[int] | None) -> None:
        """A slot went free holding `tokens` (None: nothing worth keeping, or no caching)."""
        cache = self._slots[seq_id]
        if tokens is not None and self._keep:
            cache.tokens = tokens
        else:
            llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(self._ctx), seq_id, -1, -1)
            cache.tokens, cache.digest = [], None
        self._tick += 1
        cache.used = self._tick
        self._changed = True

    def movable(self, hole: int) -> bool:
        """Whether a stream may be moved into free slot `hole`: its cache is small, or can be
        saved first. A move saves a ubatch a step, not worth a conversation's KV."""
        return self.host.enabled or len(self._slots[hole].tokens) < MIN_SAVE_TOKENS

    def move(self, top: int, hole: int) -> None:
        """Move busy slot `top`'s stream into free slot `hole`, saving hole's cache first."""
        if worth_saving(self._slots[hole], 0, self.host):
            self._save(hole)
        mem = llama_cpp.llama_get_memory(self._ctx)
        llama_cpp.llama_memory_seq_cp(mem, top, hole, -1, -1)  # overwrites hole's cache
        llama_cpp.llama_memory_seq_rm(mem, top, -1, -1)
        self._slots[hole], self._slots[top] = self._slots[top], SlotCache()
        self._changed = True

    def publish(self) -> None:
        if self._changed:
            self._changed = False
            self.prefixes = advertised(self._slots, self.host)

    def _save(self, seq_id: int) -> None:
        cache = self._slots[seq_id]
        state = save_seq(self._ctx, seq_id)
        if state is not None:
            self.host.put(cache.tokens, state, cache.digest, cache.used)

    def _restore(self, seq_id: int, entry: Entry) -> bool:
        if restore_seq(self._ctx, seq_id, entry.state):
            return True
        logger.warning("llama.cpp refused a saved state of %s tokens", len(entry.tokens))
        llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(self._ctx), seq_id, -1, -1)
        return False
