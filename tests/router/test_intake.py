"""Bounded body reads: too large is 413, too slow is 408, unreadable is 400, all OpenAI-shaped."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pytest_aiohttp import AiohttpClient, AiohttpServer

from router.intake import read_body
from router.middleware import edge_middleware

MAX_BYTES = 1024
TIMEOUT_S = 0.3


def echo_app() -> web.Application:
    """Reads the body as the chat handler does and echoes it."""

    async def echo(request: web.Request) -> web.Response:
        return web.Response(body=await read_body(request, MAX_BYTES, TIMEOUT_S))

    app = web.Application(client_max_size=MAX_BYTES, middlewares=[edge_middleware])
    app.router.add_post("/", echo)
    return app


async def raw_exchange(
    server: TestServer, head: bytes, body: bytes
) -> tuple[bytes, dict[str, str]]:
    """Send `head` and `body` as they are; the status line and the JSON error that came back."""
    assert server.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(head + body)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(65536), 3)
    finally:
        writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    error: dict[str, str] = orjson.loads(rest.partition(b"\r\n\r\n")[2])["error"]
    return status_line, error


async def test_a_body_within_the_bounds_is_read_whole(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(echo_app())
    resp = await client.post("/", data=b"x" * MAX_BYTES)
    assert resp.status == 200
    assert await resp.read() == b"x" * MAX_BYTES


async def test_a_body_over_the_limit_is_413(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(echo_app())
    resp = await client.post("/", data=b"x" * (MAX_BYTES + 1))
    assert resp.status == 413
    error = orjson.loads(await resp.read())["error"]
    assert error["code"] == "payload_too_large"
    assert error["message"] == f"The request body exceeds {MAX_BYTES} bytes."


async def test_a_body_that_stalls_is_408(aiohttp_server: AiohttpServer) -> None:
    server = await aiohttp_server(echo_app())
    head = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
    loop = asyncio.get_running_loop()
    started = loop.time()
    status_line, error = await raw_exchange(server, head, b"only a part")
    assert TIMEOUT_S * 0.9 < loop.time() - started < 2
    assert status_line == b"HTTP/1.1 408 Request Timeout"
    assert error["code"] == "request_timeout"
    assert error["message"] == f"The request body did not arrive within {TIMEOUT_S:g} seconds."


@pytest.mark.parametrize("encoding", [b"gzip", b"deflate"])
async def test_a_body_that_does_not_decode_is_400(
    aiohttp_server: AiohttpServer, encoding: bytes
) -> None:
    server = await aiohttp_server(echo_app())
    head = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Encoding: " + encoding
    head += b"\r\nContent-Length: 5\r\n\r\n"
    status_line, error = await raw_exchange(server, head, b"hello")
    assert status_line == b"HTTP/1.1 400 Bad Request"
    assert error["type"] == "invalid_request_error"
    assert error["message"] == "The request body could not be read."
