"""The step loop's pure scheduling (worker.prefill): prompt chunk plans, and when the running
streams' decode may wait for prompts."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.prefill import CallCost, PromptsFirst, plan_chunks


def test_the_best_size_reads_the_most_tokens_within_the_budget() -> None:
    assert plan_chunks([], 16)[1] == []  # nothing to read
    assert plan_chunks([40], 16) == (16, [0])
    assert plan_chunks([5, 5, 5], 16) == (5, [0, 1, 2])
    # 17 tokens left: 16 would leave a lone token, so 15 (leaving 2).
    assert plan_chunks([17], 16) == (15, [0])
    assert plan_chunks([2, 40], 16) == (16, [1])


@given(
    left=st.lists(st.integers(min_value=2, max_value=600), max_size=16),
    budget=st.integers(min_value=8, max_value=512),
)
def test_prompt_chunks_keep_two_or_more_tokens_per_stream(left: list[int], budget: int) -> None:
    size, joining = plan_chunks(left, budget)
    assert bool(joining) == bool(left)  # some prompt always moves on
    assert len(set(joining)) == len(joining)
    assert size * len(joining) <= budget
    for i in joining:
        assert size >= 2
        assert left[i] == size or left[i] - size >= 2  # never one lone token left to read


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_call_costs_are_fitted_as_overhead_plus_tokens() -> None:
    cost = CallCost()
    assert cost.fit() is None  # nothing seen yet
    for _ in range(5):
        cost.observe(8, 0.004 + 8 * 0.0045)
    assert cost.fit() is None  # one size only: overhead and per-token cost are not apart yet
    for n in (1, 16, 2, 32):
        cost.observe(n, 0.004 + n * 0.0045)
    fitted = cost.fit()
    assert fitted is not None
    assert fitted == pytest.approx((0.004, 0.0045))


def policy(overhead_s: float, token_s: float, budget: int = 256) -> PromptsFirst:
    cost = CallCost()
    for n in (1, 4, 16):
        cost.observe(n, overhead_s + n * token_s)
    return PromptsFirst(budget, Clock(), cost)


def test_prompts_are_read_in_groups_that_wait_least_on_average() -> None:
    cpu = policy(0.004, 0.0045)  # every token costs: a few at a time
    assert cpu.group(16, 2) == 3
    assert cpu.group(8, 2) == 2
    assert cpu.group(4, 300) == 1  # long prompts: the shortest alone first
    gpu = policy(0.010, 0.00001)  # a call's overhead dominates: all at once
    assert gpu.group(16, 2) == 16
    assert PromptsFirst(256, Clock()).group(16, 2) == 16  # costs unknown: all at once


def test_decodes_wait_for_prompts_no_longer_than_a_full_chunk_takes() -> None:
    rules = policy(0.004, 0.004, budget=256)
    clock = rules.clock
    assert isinstance(clock, Clock)
    ready = clock.now
    assert not rules.starved(ready, tokens=6)
    clock.now += 0.9  # waited 0.9 s: a 6-token chunk more stays within 256 tokens' 1.024 s
    assert not rules.starved(ready, tokens=6)
    assert rules.starved(ready, tokens=60)
    clock.now += 0.2
    assert rules.starved(ready, tokens=2)
    assert PromptsFirst(256, Clock()).starved(clock.now, 2)  # costs unknown: decode first


def test_the_shortest_prompts_are_read_first() -> None:
    left = [40, 2, 2, 30]
    assert policy(0.004, 0.0045).plan(left) == (2, [1])  # one of the 2-token prompts first
    # All four may go, and plan_chunks reads the most tokens: 30 of each of the longest two.
    assert policy(0.010, 0.00001).plan(left) == (30, [3, 0])
    assert policy(0.010, 0.00001).plan([])[1] == []
