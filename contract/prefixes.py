"""Conversation prefixes named without tokenizing: what a worker advertises it holds in its KV
cache and what a router looks up to send a request where its prefix is cached.

A chat request's prompt is its messages rendered in order, so every message boundary is a
prefix of the prompt; a later turn of a conversation repeats the earlier turn's messages and
appends the reply and a new message. Each boundary gets a chained hash,

    h_0 = H(tools)          h_i = H(h_{i-1} . canonical(message_i))

so one 16-hex-digit string names "these tools and these first i messages", and the router can
compare a request against a worker's advertisement with set lookups only. Both sides compute it
here, from the request JSON, so they agree without sharing a tokenizer.

Canonical form: a message's fields that are not null, keys sorted, compact JSON; a client that
sends an assistant reply back with `"refusal": null` or without it names the same prefix.
Anything else that changes the rendered prompt (a different `tools` list) changes h_0 and with it
every hash. A hash collision (2^-64) costs a cache miss, never a wrong answer: the worker
matches tokens, not hashes.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson

HASH_CHARS: Final = 16  # 64 bits, hex
MAX_ADVERTISED: Final = 256  # prefix hashes one worker record may carry
HASH_RE: Final = re.compile(rf"[0-9a-f]{{{HASH_CHARS}}}")


@dataclass(frozen=True, slots=True)
class Boundary:
    """One message boundary of a request: its hash and the canonical bytes up to it, a
    tokenizer-free stand-in for how much of the prompt a cache hit there saves."""

    digest: str
    chars: int


def _hash(previous: bytes, part: bytes) -> bytes:
    return hashlib.blake2b(previous + part, digest_size=HASH_CHARS // 2).digest()


def canonical(message: Mapping[str, Any]) -> bytes:
    """A message's identity: its non-null fields, keys sorted, compact JSON."""
    kept = {k: v for k, v in message.items() if v is not None}
    return orjson.dumps(kept, option=orjson.OPT_SORT_KEYS)


def boundaries(messages: Sequence[Any], tools: Any = None) -> list[Boundary]:
    """One Boundary per message of a chat request, in order; [] if the messages are not a list
    of JSON objects (the request fails validation elsewhere; routing just gets no hint)."""
    if not isinstance(messages, Sequence) or isinstance(messages, str | bytes):
        return []
    state = _hash(b"", b"" if tools is None else orjson.dumps(tools, option=orjson.OPT_SORT_KEYS))
    chars = 0
    out: list[Boundary] = []
    for message in messages:
        if not isinstance(message, Mapping):
            return []
        try:
            part = canonical(message)
        except TypeError:  # not JSON-serialisable (never from a parsed body)
            return []
        state = _hash(state, part)
        chars += len(part)
        out.append(Boundary(state.hex(), chars))
    return out


def conversation_key(messages: Sequence[Any], tools: Any = None) -> str | None:
    """What stays the same across the turns of one conversation: the hash at its first
    non-system message (its system prompt and opening question), None if there is none."""
    found = boundaries(messages, tools)
    for message, boundary in zip(messages, found, strict=False):
        if message.get("role") not in ("system", "developer"):
            return boundary.digest
    return None


def encode(digests: Iterable[str]) -> str:
    """Digests as a registry field: comma-separated, at most MAX_ADVERTISED."""
    return ",".join(list(digests)[:MAX_ADVERTISED])


def problem(digests: Sequence[str]) -> str | None:
    """What is wrong with a list of digests as a record holds it, or None."""
    if len(digests) > MAX_ADVERTISED:
        return f"expected at most {MAX_ADVERTISED} prefix hashes"
    if not all(isinstance(d, str) and HASH_RE.fullmatch(d) for d in digests):
        return f"expected {HASH_CHARS} lowercase hex digits per prefix hash"
    return None


def decode(field: str) -> tuple[str, ...]:
    """A registry field back into digests; ValueError if any is malformed or there are too many."""
    digests = tuple(field.split(",")) if field else ()
    if (found := problem(digests)) is not None:
        raise ValueError(found)
    return digests
