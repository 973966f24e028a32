"""Token log-probabilities, as OpenAI reports them (`logprobs: true`, `top_logprobs`).

A token's logprob is the log-softmax of the row of logits it was drawn from, with `logit_bias`
added but before penalties, grammar, temperature and top_p, as OpenAI reports the model's own
distribution. Computed with numpy over the whole row, only for requests that ask.

Pairing with text: entries follow tokens, text follows characters. An engine hands one
`Logprobs` item per sampled token (never for an end-of-generation token) before that token's
text; a streamed chunk carries the entries of every token sampled since the previous chunk, so a
token whose text is held back (half a UTF-8 character, a possible stop string) has its entry in
the chunk where that text, or the next text, goes out. Tokens of a stop string have entries but
no text; entries still pending at the end go out in a last content chunk with empty content.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from contract.wire import SamplingParams

MAX_TOP_LOGPROBS = 20


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    token: str
    logprob: float
    bytes: bytes
    top: tuple[TokenLogprob, ...] = ()  # the most likely tokens, best first


@dataclass(frozen=True, slots=True)
class Logprobs:
    """An engine output: the entries of the tokens sampled since the last output."""

    entries: tuple[TokenLogprob, ...]


def _candidate(piece: bytes, logprob: float) -> TokenLogprob:
    return TokenLogprob(piece.decode("utf-8", errors="replace"), logprob, piece)


def token_logprob(
    logits: npt.NDArray[np.float32],
    token: int,
    top: int,
    piece: Callable[[int], bytes],
    bias: Sequence[tuple[int, float]] = (),
) -> TokenLogprob:
    """The entry of `token`, drawn from the row `logits`, with its `top` best alternatives."""
    row = logits.astype(np.float64)  # a copy: the engine's logits stay as they are
    for token_id, value in bias:
        row[token_id] += value
    peak = row.max()
    log_total = peak + np.log(np.exp(row - peak).sum())
    alternatives: tuple[TokenLogprob, ...] = ()
    if top:
        best = np.argpartition(row, -top)[-top:]
        best = best[np.argsort(-row[best], kind="stable")]
        alternatives = tuple(_candidate(piece(int(i)), float(row[i] - log_total)) for i in best)
    entry = _candidate(piece(token), float(row[token] - log_total))
    return TokenLogprob(entry.token, entry.logprob, entry.bytes, alternatives)


def entry_object(entry: TokenLogprob) -> dict[str, Any]:
    """OpenAI's `logprobs.content[]` item."""
    return {
        "token": entry.token,
        "logprob": entry.logprob,
        "bytes": list(entry.bytes),
        "top_logprobs": [
            {"token": t.token, "logprob": t.logprob, "bytes": list(t.bytes)} for t in entry.top
        ],
    }


def logprobs_object(entries: Sequence[TokenLogprob]) -> dict[str, Any]:
    """A choice's `logprobs`: content entries, no refusal."""
    return {"content": [entry_object(e) for e in entries], "refusal": None}


class LogitsHook:
    """LlamaEngine's logits processor (the first link of Llama's sampler chain): adds
    `logit_bias` to the row a token is drawn from, and keeps a copy of the raw row when logprobs
    are asked for. `of` gives None for a request that asks for neither."""

    __slots__ = ("_ids", "_keep", "_values", "row")

    def __init__(self, params: SamplingParams) -> None:
        self._ids = np.array([token for token, _ in params.logit_bias], dtype=np.intc)
        self._values = np.array([bias for _, bias in params.logit_bias], dtype=np.float32)
        self._keep = params.top_logprobs is not None
        self.row: npt.NDArray[np.float32] | None = None

    @classmethod
    def of(cls, params: SamplingParams) -> LogitsHook | None:
        wanted = params.logit_bias or params.top_logprobs is not None
        return cls(params) if wanted else None

    def __call__(
        self, input_ids: npt.NDArray[np.intc], scores: npt.NDArray[np.float32]
    ) -> npt.NDArray[np.float32]:
        if self._keep:
            self.row = scores.copy()  # the chain's later links rewrite `scores`
        if len(self._ids):
            scores[self._ids] += self._values
        return scores
