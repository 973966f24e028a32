"""A chat request's cache affinity: which worker is likely to hold its prompt's prefix.

Pure: imports neither aiohttp nor redis. Computed once per chat request, and only when the
router runs the `cache-aware` policy (router.balancer.CacheAware): the handler then parses the
body with `parse_affine_chat` (the one parse, keeping the JSON the prefixes are hashed from) and
asks `chat_affinity` for the request's `Affinity`, which travels on the Exchange to admission.

An affinity is the request's message boundaries (contract.prefixes, the same hashes workers
advertise for what their KV cache holds) and a conversation key for rendezvous hashing when no
worker advertises any of them. The key is, first found: the `X-Session-Id` header, the request's
`user` field, the conversation's own key (its system prompt and opening message), so every turn
of a conversation gets one key and every router replica hashes it to the same worker.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from contract.prefixes import Boundary, boundaries
from contract.wire import ChatRequest, chat_request_from_dict, parse_body

SESSION_HEADER: Final = "X-Session-Id"
MAX_KEY_CHARS: Final = 256  # a longer session id or user name is cut: it is a hash key only
SYSTEM_ROLES: Final = frozenset({"system", "developer"})


@dataclass(frozen=True, slots=True)
class Affinity:
    """What a cache-aware choice reads of a request: its boundaries, shallowest first, and the
    key that rendezvous hashing places its conversation by."""

    boundaries: tuple[Boundary, ...]
    key: bytes


@dataclass(frozen=True, slots=True)
class AffineChat:
    """A chat request parsed for the cache-aware policy: the request, and the body as JSON (its
    messages, tools and user name the affinity)."""

    request: ChatRequest
    data: Mapping[str, Any]

    @property
    def model(self) -> str:
        return self.request.model

    @property
    def stream(self) -> bool:
        return self.request.stream


def parse_affine_chat(body: bytes) -> AffineChat:
    """As contract.wire.parse_chat_request (one JSON parse, the same validation), keeping the
    parsed body."""
    data = parse_body(body)
    return AffineChat(chat_request_from_dict(data), data)


def chat_affinity(chat: AffineChat, headers: Mapping[str, str]) -> Affinity | None:
    """The affinity of a parsed chat request, given its HTTP headers."""
    data = chat.data
    session = headers.get(SESSION_HEADER) or data.get("user")
    return affinity_of(data.get("messages"), data.get("tools"), session)


def affinity_of(messages: Any, tools: Any = None, session: Any = None) -> Affinity | None:
    """The affinity of `messages` (and `tools`); `session` (a string) names the conversation if
    given. None when the messages have no boundary (not a list of objects)."""
    found = boundaries(messages, tools)
    if not found:
        return None
    if isinstance(session, str) and session:
        key = session[:MAX_KEY_CHARS].encode()
    else:
        key = _conversation(messages, found).encode()
    return Affinity(tuple(found), key)


def _conversation(messages: Sequence[Mapping[str, Any]], found: list[Boundary]) -> str:
    """As contract.prefixes.conversation_key, from boundaries already computed: the hash at the
    first message that is not a system prompt (a system-only request: its last)."""
    for message, boundary in zip(messages, found, strict=False):
        if message.get("role") not in SYSTEM_ROLES:
            return boundary.digest
    return found[-1].digest
