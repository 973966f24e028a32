"""Which KV cache a batched request starts from: a free slot's, or one kept in host RAM.

Pure bookkeeping for worker.kv_caches, which makes the llama.cpp calls (worker.llama_native's
save_seq / restore_seq, llama_memory_seq_rm). A free slot keeps the tokens of its last request
as a prompt cache. A new request takes the free slot that shares the longest token prefix with
its prompt; ties (most often: only the system prompt) and matches under MIN_MATCH_TOKENS (a chat
template's header) go to the least recently used one, so that N conversations on fewer slots
each keep their history as long as possible. Before a slot's cache loses MIN_SAVE_TOKENS or
more to a request that does not extend it, its KV state is copied to the HostCache
(llama_state_seq_get_data: ~15 ms for 1,000 tokens, ~23 MB on SmolLM2-135M); a request whose
prompt shares a longer prefix with an entry there than with any free slot gets that state
loaded into a slot (~4 ms), trimmed to the shared prefix. A restored stream's cells hold the
values a prefill would write, bit for bit, so its output is unchanged.

Every cache (slot or host entry) remembers the contract.prefixes digest of the request whose
prompt it holds; `advertised` lists them, most recent first, for the worker's heartbeat.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

from contract.prefixes import MAX_ADVERTISED

MIN_MATCH_TOKENS = 16  # a shorter shared prefix (a chat template's header) counts as none
MIN_SAVE_TOKENS = 32  # a slot cache losing fewer tokens is not worth a copy to host RAM
# Host tokens beyond the best slot's that pay for a restore: a few ms a state, while reading a
# prompt token costs ~4 ms on a 2-core CPU (a short prompt's subject is often ~10 tokens).
MIN_RESTORE_GAIN = 8


def shared_prefix(a: Sequence[int], b: Sequence[int], limit: int) -> int:
    """How many leading tokens `a` and `b` share, at most `limit`."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if n >= limit or x != y:
            break
        n += 1
    return n


@dataclass(slots=True)
class SlotCache:
    """What one slot's KV stream holds, once free; touched only by the inference thread."""

    tokens: list[int] = field(default_factory=list)
    digest: str | None = None  # of the request whose prompt it holds (or is reading)
    used: int = 0  # tick of the last admission or release (LRU)


@dataclass(eq=False, slots=True)
class Entry:
    tokens: tuple[int, ...]
    state: bytearray  # llama_state_seq_get_data's bytes
    digest: str | None
    used: int


class HostCache:
    """Saved sequence states keyed by their tokens, at most `capacity` bytes, LRU eviction.
    A linear scan finds the longest shared prefix: entries are few (MiBs each)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.nbytes = 0
        self._entries: OrderedDict[int, Entry] = OrderedDict()  # id -> entry, LRU first

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def enabled(self) -> bool:
        return self.capacity > 0

    def entries(self) -> list[Entry]:
        """Most recently used first."""
        return list(reversed(self._entries.values()))

    def longest(self, prompt: Sequence[int], limit: int) -> tuple[Entry | None, int]:
        best: tuple[Entry | None, int] = (None, 0)
        for entry in self._entries.values():
            if (n := shared_prefix(entry.tokens, prompt, limit)) > best[1]:
                best = (entry, n)
        return best

    def covers(self, tokens: Sequence[int]) -> Entry | None:
        """An entry holding `tokens` or more (they are its prefix), if any."""
        n = len(tokens)
        return next((e for e in self._entries.values() if e.tokens[:n] == tuple(tokens)), None)

    def touch(self, entry: Entry, tick: int) -> None:
        """Mark `entry` used (the engine does so before saving a slot, so that save's eviction
        spares it). An entry already dropped stays dropped: what replaced it holds more."""
        entry.used = tick
        if self._entries.get(id(entry)) is entry:
            self._entries.move_to_end(id(entry))

    def put(self, tokens: Sequence[int], state: bytearray, digest: str | None, tick: int) -> bool:
        """Keep a state (dropping entries it extends, then the least recently used until it
        fits); False if it is larger than the whole cache."""
        if len(state) > self.capacity:
            return False
        key = tuple(tokens)
        for old in [e for e in self._entries.values() if key[: len(e.tokens)] == e.tokens]:
            self._drop(old)
        while self.nbytes + len(state) > self.capacity:
            self._drop(next(iter(self._entries.values())))
        entry = Entry(key, state, digest, tick)
        self._entries[id(entry)] = entry
        self.nbytes += len(state)
        return True

    def _drop(self, entry: Entry) -> None:
        del self._entries[id(entry)]
        self.nbytes -= len(entry.state)


@dataclass(frozen=True, slots=True)
class Plan:
    """Where a request goes and what it reuses: `restore` (if any) is loaded into slot
    `seq_id` first, after its own cache is saved if `save`; then `keep` tokens stay."""

    seq_id: int
    keep: int
    save: bool
    restore: Entry | None = None


def plan(prompt: Sequence[int], free: Sequence[tuple[int, SlotCache]], host: HostCache) -> Plan:
    """The start for a prompt, given the free slots (seq id, cache), at least one. Up to all
    but 2 prompt tokens may be reused, so the rest is read as a fresh prompt would be."""
    limit = max(0, len(prompt) - 2)
    matches = [(shared_prefix(c.tokens, prompt, limit), -c.used, i) for i, c in free]
    keep, _, seq_id = max(matches)
    if keep < MIN_MATCH_TOKENS:  # nothing worth another slot's cache: the least recently used
        _, seq_id = min((c.used, i) for i, c in free)
        keep = shared_prefix(dict(free)[seq_id].tokens, prompt, limit)
    entry, restored = host.longest(prompt, limit) if host.enabled else (None, 0)
    if entry is not None and restored >= keep + MIN_RESTORE_GAIN:
        _, seq_id = min((c.used, i) for i, c in free)
        cache = dict(free)[seq_id]
        return Plan(seq_id, restored, worth_saving(cache, 0, host), entry)
    return Plan(seq_id, keep, worth_saving(dict(free)[seq_id], keep, host))


def worth_saving(cache: SlotCache, keep: int, host: HostCache) -> bool:
    """Whether a slot cache that keeps only `keep` of its tokens goes to host RAM first."""
    lost = len(cache.tokens) - keep
    return host.enabled and lost >= MIN_SAVE_TOKENS and host.covers(cache.tokens) is None


def advertised(slots: Sequence[SlotCache], host: HostCache) -> tuple[str, ...]:
    """The digests of the prompts the slots (busy or not) and the host cache hold, most
    recent first, each once, at most MAX_ADVERTISED."""
    found = [(c.used, c.digest) for c in slots if c.digest is not None]
    found += [(e.used, e.digest) for e in host.entries() if e.digest is not None]
    found.sort(key=lambda pair: -pair[0])
    return tuple(dict.fromkeys(d for _, d in found))[:MAX_ADVERTISED]
