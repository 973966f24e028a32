"""The ceiling for batched decoding: a bare greedy loop over llama.cpp's low-level bindings.

N sequences share one model and one context (the same context the batched engine builds). The
prompts are prefilled together, then each step is ONE llama_decode carrying the next token of
every sequence followed by an argmax per sequence, and nothing else: no sampler chain, no
detokenising, no stop strings, no queues, no event loop. Aggregate decode tokens/s over N is
what a batched engine can approach; benchmarks/batched/ reports the engine against it.

    python -m benchmarks.bare_loop --model PATH [--n-gpu-layers 99] [--threads 2] [--seqs 1,4,8,16]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import llama_cpp
import numpy as np

from worker.batched_engine import LoadedModel, new_context

# About as long as a short chat turn under the SmolLM2 template (~40 tokens).
PROMPT = (
    b"<|im_start|>system\nYou are a helpful AI assistant.<|im_end|>\n<|im_start|>user\n"
    b"Write a long story about a lighthouse keeper and a storm.<|im_end|>\n"
    b"<|im_start|>assistant\n"
)


@dataclass(frozen=True, slots=True)
class BareResult:
    seqs: int
    prompt_tokens: int  # per sequence
    tokens: int  # generated, all sequences
    decode_s: float
    tokens_per_s: float  # decode steps only: the ceiling for steady generation
    prefill_s: float
    e2e_tokens_per_s: float  # prefill included: the same work as one engine round


def run(
    model: LoadedModel,
    *,
    seqs: Sequence[int],
    n_gen: int,
    n_ctx: int,
    n_threads: int | None,
    unified: bool = False,
    prompt: Sequence[int] | None = None,
) -> list[BareResult]:
    """Decode `n_gen` greedy tokens for each N in `seqs`, in one context sized for max(seqs);
    every sequence reads the same prompt (PROMPT unless given as tokens)."""
    prompt = list(prompt) if prompt is not None else _tokenize(model, PROMPT)
    most = max(seqs)
    n_batch = max(len(prompt) * most, most)
    ctx = new_context(
        model,
        n_ctx=n_ctx * most,
        n_batch=n_batch,
        n_seq_max=most,
        n_threads=n_threads,
        unified=unified,
    )
    batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
    try:
        _generate(model, ctx, batch, prompt, min(2, most), 4)  # warm-up: first-use allocations
        return [_generate(model, ctx, batch, prompt, n, n_gen) for n in seqs]
    finally:
        llama_cpp.llama_batch_free(batch)
        llama_cpp.llama_free(ctx)


def _tokenize(model: LoadedModel, text: bytes) -> list[int]:
    buf = (llama_cpp.llama_token * (len(text) + 8))()
    n = llama_cpp.llama_tokenize(model.vocab, text, len(text), buf, len(buf), False, True)
    return list(buf[:n])


def _generate(
    model: LoadedModel, ctx: Any, batch: Any, prompt: list[int], n_seqs: int, n_gen: int
) -> BareResult:
    llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)

    def add(i: int, token: int, pos: int, seq: int, logits: bool) -> None:
        batch.token[i] = token
        batch.pos[i] = pos
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = seq
        batch.logits[i] = logits

    n = 0
    last = []
    for seq in range(n_seqs):
        for pos, token in enumerate(prompt):
            add(n, token, pos, seq, pos == len(prompt) - 1)
            n += 1
        last.append(n - 1)
    batch.n_tokens = n
    t0 = time.perf_counter()
    _decode(ctx, batch)
    prefill_s = time.perf_counter() - t0
    tokens = [_argmax(ctx, i, model.n_vocab) for i in last]

    t0 = time.perf_counter()
    for step in range(n_gen):
        for seq in range(n_seqs):
            add(seq, tokens[seq], len(prompt) + step, seq, True)
        batch.n_tokens = n_seqs
        _decode(ctx, batch)
        tokens = [_argmax(ctx, seq, model.n_vocab) for seq in range(n_seqs)]
    seconds = time.perf_counter() - t0
    generated = n_seqs * n_gen
    return BareResult(
        seqs=n_seqs,
        prompt_tokens=len(prompt),
        tokens=generated,
        decode_s=round(seconds, 4),
        tokens_per_s=round(generated / seconds, 2),
        prefill_s=round(prefill_s, 4),
        e2e_tokens_per_s=round(generated / (seconds + prefill_s), 2),
    )


def _decode(ctx: Any, batch: Any) -> None:
    status = llama_cpp.llama_decode(ctx, batch)
    if status != 0:
        raise RuntimeError(f"llama_decode returned {status}")


def _argmax(ctx: Any, i: int, n_vocab: int) -> int:
    logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, i), shape=(n_vocab,))
    return int(logits.argmax())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--n-gpu-layers", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seqs", default="1,4,8,16", help="comma-separated sequence counts")
    parser.add_argument("--n-gen", type=int, default=64, help="tokens decoded per sequence")
    parser.add_argument("--n-ctx", type=int, default=1024, help="KV cells per sequence")
    parser.add_argument("--unified", action="store_true", help="one KV cache for all sequences")
    args = parser.parse_args(argv)
    model = LoadedModel(args.model, args.n_gpu_layers)
    try:
        results = run(
            model,
            seqs=[int(s) for s in args.seqs.split(",")],
            n_gen=args.n_gen,
            n_ctx=args.n_ctx,
            n_threads=args.threads,
            unified=args.unified,
        )
    finally:
        model.close()
    for r in results:
        print(json.dumps(asdict(r)), file=sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
