"""llama.cpp's C API as the batched engine drives it: model, multi-sequence context, batch rows,
per-stream sampler chains. Everything here runs off the event loop; free what it makes."""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import Any

import llama_cpp

from contract.wire import SamplingParams

MAX_SEQ = 256  # LLAMA_MAX_SEQ
PENALTY_LAST_N = 64  # Llama's last_n_tokens_size, which LlamaEngine's penalties use


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


def put_token(batch: Any, i: int, token: int, pos: int, seq_id: int, logits: bool) -> None:
    """Row `i` of a llama_batch: `token` at `pos` of sequence `seq_id`."""
    batch.token[i] = token
    batch.pos[i] = pos
    batch.n_seq_id[i] = 1
    batch.seq_id[i][0] = seq_id
    batch.logits[i] = logits


def new_sampler(params: SamplingParams, n_vocab: int, grammar: Any = None) -> Any:
    """LlamaEngine's sampler chain, less its no-op links; free with llama_sampler_free. None
    for plain greedy decoding, which needs no sampler (first highest logit, as llama.cpp's).
    A `grammar` sampler goes where LlamaEngine's goes, after the penalties; the chain owns it.
    A `logit_bias` comes first, where LlamaEngine's logits processor is."""
    penalised = params.presence_penalty or params.frequency_penalty
    if params.temperature == 0 and not penalised and grammar is None and not params.logit_bias:
        return None
    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())

    def add(sampler: Any) -> None:
        llama_cpp.llama_sampler_chain_add(chain, sampler)

    if params.logit_bias:
        add(new_logit_bias(params.logit_bias, n_vocab))

    if penalised:
        penalties = llama_cpp.llama_sampler_init_penalties(
            n_vocab, PENALTY_LAST_N, 1.0, params.frequency_penalty, params.presence_penalty
        )
        add(penalties)
    if grammar is not None:
        add(grammar)
    if params.temperature == 0:
        add(llama_cpp.llama_sampler_init_greedy())
        return chain
    if params.top_p < 1:
        add(llama_cpp.llama_sampler_init_top_p(params.top_p, 1))
    add(llama_cpp.llama_sampler_init_temp(params.temperature))
    seed = llama_cpp.LLAMA_DEFAULT_SEED if params.seed is None else params.seed & 0xFFFFFFFF
    add(llama_cpp.llama_sampler_init_dist(seed))
    return chain


def new_logit_bias(bias: Sequence[tuple[int, float]], n_vocab: int) -> Any:
    """llama.cpp's logit-bias sampler (it copies `bias`); free it, or the chain that owns it."""
    entries = (llama_cpp.llama_logit_bias * len(bias))()
    for entry, (token, value) in zip(entries, bias, strict=True):
        entry.token = token
        entry.bias = value
    return llama_cpp.llama_sampler_init_logit_bias(n_vocab, len(bias), entries)


def save_seq(ctx: Any, seq_id: int) -> bytearray | None:
    """Sequence `seq_id`'s KV state, copied to host memory; None if llama.cpp wrote nothing."""
    size = llama_cpp.llama_state_seq_get_size(ctx, seq_id)
    state = bytearray(size)
    if size == 0:
        return None
    buffer = (ctypes.c_uint8 * size).from_buffer(state)
    written = llama_cpp.llama_state_seq_get_data(ctx, buffer, size, seq_id)
    del buffer  # the bytearray may not be resized while a ctypes view exports it
    return state if written == size else None


def restore_seq(ctx: Any, seq_id: int, state: bytearray) -> bool:
    """Load a state from save_seq into sequence `seq_id` (any id), replacing what it held.
    False: llama.cpp refused it (no room; the sequence is then empty)."""
    buffer = (ctypes.c_uint8 * len(state)).from_buffer(state)
    return bool(llama_cpp.llama_state_seq_set_data(ctx, buffer, len(state), seq_id))
