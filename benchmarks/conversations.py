"""Multi-turn conversations: the workload that has prefixes to reuse.

N conversations run at once, each a fixed number of turns. Turn 1 sends a system prompt and a
question; every later turn sends the whole history again (each earlier question and the reply
it got) plus a new question, as a chat client does. With `shared_system` every conversation
opens with the same long system prompt (a document the questions are about); without it, each
conversation gets its own system prompt of the same length and nothing is shared across
conversations (the control). Texts are seeded words, so two runs with one seed send the same
turn-1 prompts; later turns depend on the replies, which are token-exact in length when the
workers run with `--ignore-eos` (max_tokens every time).

`drive` runs the conversations through a router with streamed requests and records, per turn,
TTFT, the reply's tokens and the usage the worker reported (prompt, completion and
`prompt_tokens_details.cached_tokens`).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
import orjson

from benchmarks.client import chat_url
from benchmarks.metrics import percentile

logger = logging.getLogger(__name__)

# Words the texts are drawn from: common, and each a single SmolLM2 token or two.
_VOCABULARY = """
river stone market lantern harbor winter orchard signal copper meadow engine silver garden
window ladder canyon thunder pocket violet marble rocket pillow forest candle anchor bridge
crystal desert feather glacier hammer island jungle kettle lemon mirror needle ocean pepper
quartz ribbon saddle tunnel umbrella valley walnut yellow zebra basket cobalt dragon ember
falcon granite hollow ivory jasper kernel linen mosaic
"""
WORDS = tuple(_VOCABULARY.split())


@dataclass(frozen=True, slots=True)
class Shape:
    conversations: int = 16
    turns: int = 6
    system_words: int = 450  # about 600 SmolLM2 tokens
    question_words: int = 16
    max_tokens: int = 32
    shared_system: bool = True
    seed: int = 0
    think_s: float = 0.0  # a user's pause before each later turn: uniform in [0, 2 * think_s]


@dataclass(frozen=True, slots=True)
class Turn:
    conversation: int
    turn: int
    ok: bool
    error: str | None
    ttft_s: float | None
    e2e_s: float
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int


def _words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def system_prompts(shape: Shape) -> list[str]:
    """One system prompt per conversation: the same document, or one each (the control)."""
    rng = random.Random(shape.seed)
    shared = "Answer questions about this document.\n" + _words(rng, shape.system_words)
    if shape.shared_system:
        return [shared] * shape.conversations
    return [
        f"Answer questions about document {i}.\n" + _words(rng, shape.system_words)
        for i in range(shape.conversations)
    ]


def questions(shape: Shape) -> list[list[str]]:
    """questions[c][t]: conversation c's question at turn t."""
    rng = random.Random(shape.seed + 1)
    return [
        [f"Question {t + 1}: {_words(rng, shape.question_words)}?" for t in range(shape.turns)]
        for _ in range(shape.conversations)
    ]


async def _turn(
    session: aiohttp.ClientSession,
    url: str,
    model: str,
    messages: list[dict[str, str]],
    shape: Shape,
) -> tuple[Turn, str]:
    body = {
        "model": model,
        "messages": messages,
        "max_tokens": shape.max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    t0 = time.perf_counter()
    ttft: float | None = None
    reply: list[str] = []
    usage: dict[str, Any] = {}
    error: str | None = None
    try:
        async with session.post(url, data=orjson.dumps(body)) as resp:
            if resp.status != 200:
                error = f"http_{resp.status}"
                await resp.read()
            else:
                async for line in resp.content:
                    if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                        continue
                    event = orjson.loads(line[6:])
                    if "error" in event:  # an error event ends a 200 stream early
                        failure = event["error"] or {}
                        error = f"sse_error:{failure.get('code') or failure.get('type')}"
                        logger.warning("turn failed mid-stream: %s", failure.get("message"))
                    if event.get("usage"):
                        usage = event["usage"]
                    for choice in event.get("choices") or ():
                        text = (choice.get("delta") or {}).get("content")
                        if text:
                            if ttft is None:
                                ttft = time.perf_counter() - t0
                            reply.append(text)
    except (aiohttp.ClientError, TimeoutError) as exc:
        error = type(exc).__name__
    details = usage.get("prompt_tokens_details") or {}
    turn = Turn(
        conversation=-1,
        turn=-1,
        ok=error is None and bool(usage),
        error=error if error is not None else (None if usage else "no_usage"),
        ttft_s=ttft,
        e2e_s=time.perf_counter() - t0,
        prompt_tokens=int(usage.get("prompt_tokens", 0)),
        cached_tokens=int(details.get("cached_tokens", 0)),
        completion_tokens=int(usage.get("completion_tokens", 0)),
    )
    return turn, "".join(reply)


async def drive(urls: Sequence[str], model: str, shape: Shape) -> tuple[list[Turn], float]:
    """Run every conversation to its last turn (request i of all goes to urls[i % len], OpenAI
    base URLs, as a round-robin load balancer would send it); (turns, wall seconds). With
    `think_s`, other conversations' requests take the freed slots while a user thinks, as in
    real chat traffic; without it each turn follows its reply at once (a closed loop)."""
    systems, asked = system_prompts(shape), questions(shape)
    urls = [chat_url(u) for u in urls]
    counter = 0
    turns: list[Turn] = []
    timeout = aiohttp.ClientTimeout(total=600)
    connector = aiohttp.TCPConnector(limit=0)

    async def conversation(c: int, session: aiohttp.ClientSession) -> None:
        nonlocal counter
        pauses = random.Random(shape.seed * 1000 + c)
        messages = [{"role": "system", "content": systems[c]}]
        for t in range(shape.turns):
            if t and shape.think_s > 0:  # the user reads the reply, then types
                await asyncio.sleep(pauses.uniform(0, 2 * shape.think_s))
            messages.append({"role": "user", "content": asked[c][t]})
            url = urls[counter % len(urls)]
            counter += 1
            done, reply = await _turn(session, url, model, messages, shape)
            turns.append(replace(done, conversation=c, turn=t))
            messages.append({"role": "assistant", "content": reply})

    started = time.perf_counter()
    async with aiohttp.ClientSession(
        timeout=timeout, connector=connector, headers={"Content-Type": "application/json"}
    ) as session:
        await asyncio.gather(*(conversation(c, session) for c in range(shape.conversations)))
    return turns, time.perf_counter() - started


def summary(turns: Sequence[Turn], wall_s: float) -> dict[str, Any]:
    """The figures one run reports."""
    ok = [t for t in turns if t.ok]
    ttfts = [t.ttft_s * 1000 for t in ok if t.ttft_s is not None]
    later = [t.ttft_s * 1000 for t in ok if t.ttft_s is not None and t.turn > 0]
    prompt = sum(t.prompt_tokens for t in ok)
    cached = sum(t.cached_tokens for t in ok)
    completion = sum(t.completion_tokens for t in ok)
    return {
        "requests": len(turns),
        "errors": len(turns) - len(ok),
        "error_kinds": dict(Counter(t.error for t in turns if not t.ok)),
        "wall_s": wall_s,
        "p50_ttft_ms": percentile(ttfts, 50) if ttfts else None,
        "p99_ttft_ms": percentile(ttfts, 99) if ttfts else None,
        "p50_ttft_later_turns_ms": percentile(later, 50) if later else None,
        "output_tokens_per_s": completion / wall_s if wall_s > 0 else None,
        "prompt_tokens": prompt,
        "cached_tokens": cached,
        "hit_rate": cached / prompt if prompt else None,
    }
