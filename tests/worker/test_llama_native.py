"""llama.cpp's C API pieces the batched engine uses: sampler chains and batch rows."""

from __future__ import annotations

import pytest

from contract.wire import SamplingParams

llama_cpp = pytest.importorskip("llama_cpp", reason="needs llama-cpp-python")
pytestmark = pytest.mark.llama

from worker.llama_native import new_sampler, put_token  # noqa: E402 (llama_cpp)

N_VOCAB = 100


def links(params: SamplingParams, *, grammar: bool = False) -> int | None:
    """How many samplers the chain holds; None when there is no chain (plain greedy). A
    stand-in link plays the grammar, which needs a real vocabulary."""
    link = llama_cpp.llama_sampler_init_temp(1.0) if grammar else None
    chain = new_sampler(params, N_VOCAB, link)
    if chain is None:
        return None
    try:
        return int(llama_cpp.llama_sampler_chain_n(chain))
    finally:
        llama_cpp.llama_sampler_free(chain)


def test_plain_greedy_needs_no_sampler() -> None:
    assert links(SamplingParams(temperature=0.0)) is None


def test_chains_hold_only_the_links_that_do_something() -> None:
    assert links(SamplingParams(temperature=0.0, presence_penalty=0.5)) == 2  # penalties, greedy
    assert links(SamplingParams(temperature=0.8)) == 2  # temp, dist
    assert links(SamplingParams(temperature=0.8, top_p=0.9)) == 3  # top_p, temp, dist
    assert links(SamplingParams(temperature=0.8, top_p=0.9, frequency_penalty=0.1)) == 4


def test_a_grammar_takes_a_chain_even_for_plain_greedy() -> None:
    assert links(SamplingParams(temperature=0.0), grammar=True) == 2  # grammar, greedy
    assert links(SamplingParams(temperature=0.0, presence_penalty=0.5), grammar=True) == 3
    assert links(SamplingParams(temperature=0.8, top_p=0.9), grammar=True) == 4


def test_put_token_fills_one_row_of_a_batch() -> None:
    batch = llama_cpp.llama_batch_init(4, 0, 1)
    try:
        put_token(batch, 2, token=17, pos=5, seq_id=3, logits=True)
        assert (batch.token[2], batch.pos[2], batch.n_seq_id[2]) == (17, 5, 1)
        assert batch.seq_id[2][0] == 3
        assert batch.logits[2]
    finally:
        llama_cpp.llama_batch_free(batch)
