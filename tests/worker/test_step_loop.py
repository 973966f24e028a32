"""The step loop's pure scheduling: how prompt chunks are planned (llama_cpp imported)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

pytest.importorskip("llama_cpp", reason="needs llama-cpp-python")
pytestmark = pytest.mark.llama

from worker.step_loop import plan_chunks  # noqa: E402 (llama_cpp)


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
