"""A server that closes keep-alive connections the router reuses (llama-server's cpp-httplib drops
idle ones after 5 s) costs the client nothing: the request goes again on a new connection, and
the worker's breaker does not count it.

The test server answers the first request of each connection, keeping it open, and closes the
connection without a word when a second request arrives on it: every reuse of a pooled
connection meets a closed one, deterministically.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import orjson
import pytest
from redis.asyncio import Redis

from contract.registry import publish_worker
from router.appkeys import VIEW
from router.upstream import FAILED_PENALTY

from .fakes import MODEL, TTL_MS, RouterFactory, make_record

ANSWER = orjson.dumps(
    {"object": "chat.completion", "choices": [], "usage": {"prompt_tokens": 1, "total_tokens": 1}}
)


@dataclass
class OneShotServer:
    answered: int = 0
    dropped: int = 0  # requests that met a connection closed under them

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            await reader.readexactly(length)
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(ANSWER), ANSWER)
            )
            await writer.drain()
            self.answered += 1
            if await reader.read(1):  # a second request on this connection: drop it
                self.dropped += 1
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.transport.abort()


@pytest.fixture
async def one_shot(redis: Redis[bytes]) -> AsyncIterator[OneShotServer]:
    server = OneShotServer()
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    await publish_worker(redis, make_record("w1", f"http://127.0.0.1:{port}"), TTL_MS)
    yield server
    listener.close()
    with contextlib.suppress(Exception):
        await listener.wait_closed()


async def test_closed_pooled_connections_never_reach_the_client(
    one_shot: OneShotServer, start_router: RouterFactory
) -> None:
    client = await start_router()
    body = orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
    for _ in range(6):
        resp = await client.post("/v1/chat/completions", data=body)
        assert resp.status == 200, await resp.text()
        assert await resp.read() == ANSWER
    assert one_shot.answered == 6
    assert one_shot.dropped >= 1  # the stale path was taken
    (upstream,) = client.app[VIEW].upstreams.values()
    assert upstream.load < FAILED_PENALTY  # never counted as refusing a request
