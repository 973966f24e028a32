"""The step loop's pure scheduling (worker.prefill): prompt chunk plans, and when the running
streams' decode may wait for prompts."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from worker.prefill import DecodeGate, plan_chunks


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


def test_the_decode_waits_for_prompts_only_as_long_as_a_decode_takes() -> None:
    clock = Clock()
    gate = DecodeGate(clock)
    assert gate.due(prompts_due=True)  # no decode yet: nothing to measure a wait by
    started = gate.start()
    clock.now += 0.080  # a decode of 80 ms
    gate.done(started)
    assert gate.due(prompts_due=False)  # nothing to wait for
    clock.now += 0.030
    assert not gate.due(prompts_due=True)  # 30 ms since the last decode: prompts first
    clock.now += 0.049
    assert not gate.due(prompts_due=True)
    clock.now += 0.001
    assert gate.due(prompts_due=True)  # waited as long as the decode took: decode now


def test_a_cheap_decode_barely_waits() -> None:
    clock = Clock()
    gate = DecodeGate(clock)
    started = gate.start()
    clock.now += 0.010
    gate.done(started)
    clock.now += 0.012  # one 12 ms prompt chunk later, a 10 ms decode is due
    assert gate.due(prompts_due=True)
