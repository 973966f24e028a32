"""worker.logprobs numerics, the pairing of entries with streamed chunks (worker.completions),
and the fake engine's deterministic logprobs."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from contract.wire import SamplingParams
from worker.completions import ChatAnswer, Choice
from worker.engine import Finished
from worker.fake_engine import TOKEN_LOGPROB, FakeEngine
from worker.logprobs import Logprobs, TokenLogprob, entry_object, token_logprob


def piece(token: int) -> bytes:
    return f"<{token}>".encode()


def test_token_logprob_is_the_log_softmax_with_the_bias_added() -> None:
    logits = np.array([1.0, 3.0, 2.0, 0.5], dtype=np.float32)
    entry = token_logprob(logits, 2, 2, piece, bias=((0, 5.0),))
    biased = [6.0, 3.0, 2.0, 0.5]
    total = math.log(sum(math.exp(x) for x in biased))
    assert math.isclose(entry.logprob, 2.0 - total, rel_tol=1e-6)
    assert (entry.token, entry.bytes) == ("<2>", b"<2>")
    assert [t.token for t in entry.top] == ["<0>", "<1>"]
    assert math.isclose(entry.top[0].logprob, 6.0 - total, rel_tol=1e-6)
    assert logits[0] == 1.0  # the engine's row is left as it was
    assert token_logprob(logits, 1, 0, piece).top == ()


def test_entry_object_is_openais_shape() -> None:
    entry = TokenLogprob("é", -0.5, "é".encode(), (TokenLogprob("é", -0.5, "é".encode()),))
    assert entry_object(entry) == {
        "token": "é",
        "logprob": -0.5,
        "bytes": [195, 169],
        "top_logprobs": [{"token": "é", "logprob": -0.5, "bytes": [195, 169]}],
    }


def chunks(frames: bytes) -> list[dict[str, Any]]:
    lines = frames.decode().split("\n\n")
    return [json.loads(line[6:]) for line in lines if line.startswith("data: {")]


def entry(token: str) -> TokenLogprob:
    return TokenLogprob(token, -1.0, token.encode())


def test_held_back_entries_go_out_with_the_next_text_or_at_the_end() -> None:
    answer = ChatAnswer("m", None, include_usage=False, usage_trailer=False, logprobs=True).choice(
        0
    )
    assert answer.feed("", [entry("\xe2")]) == b""  # half a character: no text yet
    (first,) = chunks(answer.feed("€", [entry("\x82\xac")]))
    assert first["choices"][0]["delta"] == {"content": "€"}
    assert [e["token"] for e in first["choices"][0]["logprobs"]["content"]] == ["\xe2", "\x82\xac"]
    assert first["choices"][0]["logprobs"]["refusal"] is None
    answer.feed("", [entry("STOP")])  # a stop string's token: an entry, no text
    last, finish = chunks(answer.finish(Finished("stop", 3, 3), []))
    assert last["choices"][0]["delta"] == {"content": ""}
    assert [e["token"] for e in last["choices"][0]["logprobs"]["content"]] == ["STOP"]
    assert finish["choices"][0]["logprobs"] is None


def test_whole_answers_carry_logprobs_only_when_asked() -> None:
    done = Finished("length", 3, 1)
    asked = ChatAnswer("m", None, include_usage=False, usage_trailer=False, logprobs=True)
    body = asked.whole([Choice("hi", done, [entry("hi")])])
    assert body["choices"][0]["logprobs"]["content"][0]["token"] == "hi"
    plain = ChatAnswer("m", None, include_usage=False, usage_trailer=False)
    assert plain.whole([Choice("hi", done)])["choices"][0]["logprobs"] is None
    assert chunks(plain.choice(0).feed("hi", []))[0]["choices"][0]["logprobs"] is None


async def test_the_fake_engine_gives_each_token_a_deterministic_entry() -> None:
    engine = FakeEngine(ttft_ms=0, tokens_per_s=0)
    items = [
        item async for item in engine.stream("hi", SamplingParams(max_tokens=3, top_logprobs=2))
    ]
    logprobs = [item for item in items if isinstance(item, Logprobs)]
    texts = [item for item in items if isinstance(item, str)]
    assert [lp.entries[0].token for lp in logprobs] == texts == [" The", " quick", " brown"]
    assert all(lp.entries[0].logprob == TOKEN_LOGPROB for lp in logprobs)
    assert [t.token for t in logprobs[0].entries[0].top] == [" The", " quick"]
    plain = [item async for item in engine.stream("hi", SamplingParams(max_tokens=3))]
    assert not any(isinstance(item, Logprobs) for item in plain)
