"""worker.prompt_cache: which cache a batched request starts from (no model needed)."""

from __future__ import annotations

from contract.prefixes import MAX_ADVERTISED
from worker.prompt_cache import (
    MIN_RESTORE_GAIN,
    MIN_SAVE_TOKENS,
    HostCache,
    Plan,
    SlotCache,
    advertised,
    plan,
    shared_prefix,
)

SYSTEM = list(range(100, 140))  # a shared system prompt
A = SYSTEM + list(range(1000, 1100))  # conversation A's turn
B = SYSTEM + list(range(2000, 2100))


def state(n: int) -> bytearray:
    return bytearray(n)


def test_shared_prefix_stops_at_the_first_difference_or_the_limit() -> None:
    assert shared_prefix([1, 2, 3], [1, 2, 4], 10) == 2
    assert shared_prefix([1, 2, 3], [1, 2, 3, 4], 10) == 3
    assert shared_prefix([1, 2, 3], [1, 2, 3], 2) == 2
    assert shared_prefix([], [1], 5) == 0


def test_a_request_takes_the_slot_with_its_longest_prefix() -> None:
    free = [(0, SlotCache(B, used=9)), (1, SlotCache(A[:80], used=1)), (2, SlotCache(A, used=5))]
    prompt = [*A, 7, 7, 7]
    assert plan(prompt, free, HostCache(0)) == Plan(2, len(A), save=False)


def test_ties_and_misses_go_to_the_least_recently_used_slot() -> None:
    free = [(0, SlotCache(A, used=7)), (1, SlotCache(B, used=3)), (3, SlotCache(A, used=5))]
    other = SYSTEM + [5] * 50  # only the system prompt is shared: a tie
    assert plan(other, free, HostCache(0)).seq_id == 1
    unrelated = [9] * 50
    assert plan(unrelated, free, HostCache(0)) == Plan(1, 0, save=False)
    empty = [(0, SlotCache(used=4)), (1, SlotCache(used=2))]
    assert plan(unrelated, empty, HostCache(0)).seq_id == 1
    # A chat template's header is no match: the least recently used slot is still taken.
    x, y = [9, 9, 9, *A[len(SYSTEM) :]], [9, 9, 9, *B[len(SYSTEM) :]]
    header = [(0, SlotCache(x, used=3)), (1, SlotCache(used=2))]
    assert plan(y, header, HostCache(0)) == Plan(1, 0, save=False)
    header = [(0, SlotCache(x, used=3)), (1, SlotCache([9, 9], used=2))]
    assert plan(y, header, HostCache(0)) == Plan(1, 2, save=False)


def test_all_but_two_prompt_tokens_may_be_reused() -> None:
    free = [(0, SlotCache([*A, 1, 2]))]
    assert plan(A, free, HostCache(0)).keep == len(A) - 2


def test_a_cache_cut_short_is_saved_first_only_when_enough_is_lost() -> None:
    host = HostCache(1 << 20)
    cut = [(0, SlotCache(A))]
    assert plan(B, cut, host) == Plan(0, len(SYSTEM), save=True)
    extended = [(0, SlotCache(A[:-10]))]  # the prompt extends it: nothing lost
    assert plan([*A, 1], extended, host).save is False
    small = [(0, SlotCache(SYSTEM + [1] * (MIN_SAVE_TOKENS - 1)))]
    assert plan(B, small, host).save is False
    assert plan(B, cut, HostCache(0)).save is False  # disabled
    host.put([*A, 3, 3], state(10), None, 1)  # already saved (as part of a longer entry)
    assert plan(B, cut, host).save is False


def test_a_longer_prefix_in_host_ram_is_restored_into_the_lru_slot() -> None:
    host = HostCache(1 << 20)
    host.put(A, state(100), "a" * 16, 1)
    host.put(B, state(100), "b" * 16, 2)
    free = [(0, SlotCache(B, used=9)), (1, SlotCache(SYSTEM + [4] * 40, used=3))]
    start = plan([*A, 8, 8, 8], free, host)
    assert (start.seq_id, start.keep, start.save) == (1, len(A), True)
    assert start.restore is not None and start.restore.digest == "a" * 16
    # Not worth a restore when a slot holds nearly as much.
    near = [(0, SlotCache(A[: len(A) - MIN_RESTORE_GAIN + 1]))]
    assert plan([*A, 8, 8, 8], near, host).restore is None


def test_the_host_cache_keeps_to_its_bytes_evicting_the_least_recently_used() -> None:
    host = HostCache(250)
    host.put(A, state(100), "a" * 16, 1)
    host.put(B, state(100), "b" * 16, 2)
    first, _ = host.longest(A, 1000)
    assert first is not None
    host.touch(first, 3)  # A is now the most recent: B goes first
    host.put(SYSTEM + [1] * 40, state(100), "c" * 16, 4)
    assert host.nbytes == 200
    assert [e.digest for e in host.entries()] == ["c" * 16, "a" * 16]
    assert host.longest(B, 1000)[1] == len(SYSTEM)  # B's own entry is gone
    assert host.put(A, state(251), None, 5) is False  # never fits
    assert host.nbytes == 200


def test_an_entry_that_extends_another_replaces_it() -> None:
    host = HostCache(1000)
    host.put(A[:60], state(100), "a" * 16, 1)
    host.put(A, state(150), "b" * 16, 2)
    assert len(host) == 1
    assert host.nbytes == 150
    assert host.covers(A[:60]) is not None
    assert host.covers(B) is None


def test_advertised_lists_slots_and_host_most_recent_first_once_each() -> None:
    host = HostCache(1000)
    host.put(A, state(10), "a" * 16, 2)
    host.put(B, state(10), "b" * 16, 6)
    slots = [SlotCache(A, "c" * 16, 5), SlotCache(used=9), SlotCache(A, "a" * 16, 7)]
    assert advertised(slots, host) == ("a" * 16, "b" * 16, "c" * 16)
    many = [SlotCache(used=i, digest=f"{i:016x}") for i in range(MAX_ADVERTISED + 5)]
    found = advertised(many, HostCache(0))
    assert len(found) == MAX_ADVERTISED
    assert found[0] == f"{MAX_ADVERTISED + 4:016x}"


def test_touching_an_entry_replaced_since_it_was_found_is_harmless() -> None:
    # The engine's order: find the entry to restore, save the slot first (whose tokens extend
    # that entry, which `put` then drops), restore, touch. The touch used to raise KeyError,
    # which killed the step loop ("The engine stopped.").
    host = HostCache(1000)
    host.put([1, 2, 3, 4], bytearray(10), "a", 1)
    (found, _) = host.longest([1, 2, 3, 4, 9], 5)
    assert found is not None
    host.put([1, 2, 3, 4, 5, 6], bytearray(10), "b", 2)  # extends it: replaces it
    host.touch(found, 3)
    assert [e.tokens for e in host.entries()] == [(1, 2, 3, 4, 5, 6)]
    assert host.nbytes == 10
