"""The edge middleware: request ids, and every error OpenAI-shaped, on a small real app."""

from __future__ import annotations

import logging

import orjson
import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from contract.errors import ServiceUnavailable, internal_error_body
from router.appkeys import REQUEST_ID
from router.middleware import edge_middleware

Client = TestClient[web.Request, web.Application]


async def edge_client(aiohttp_client: AiohttpClient) -> Client:
    async def echo_id(request: web.Request) -> web.Response:
        return web.Response(text=request[REQUEST_ID])

    async def busy(_: web.Request) -> web.Response:
        raise ServiceUnavailable("Try later.", retry_after_s=2)

    async def boom(_: web.Request) -> web.Response:
        raise RuntimeError("secret detail")

    async def moved(_: web.Request) -> web.Response:
        raise web.HTTPFound("/echo")

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"X-Request-Id": "set-by-the-handler"})
        await response.prepare(request)
        await response.write(b"data")
        return response

    app = web.Application(middlewares=[edge_middleware])
    app.router.add_get("/echo", echo_id)
    app.router.add_get("/busy", busy)
    app.router.add_get("/boom", boom)
    app.router.add_get("/moved", moved)
    app.router.add_get("/stream", stream)
    return await aiohttp_client(app)


async def error_of(resp: ClientResponse) -> dict[str, object]:
    body = orjson.loads(await resp.read())
    assert set(body["error"]) == {"message", "type", "param", "code"}
    error: dict[str, object] = body["error"]
    return error


async def test_a_sane_request_id_is_echoed_and_handed_to_the_handler(
    aiohttp_client: AiohttpClient,
) -> None:
    client = await edge_client(aiohttp_client)
    resp = await client.get("/echo", headers={"X-Request-Id": "req-42"})
    assert resp.headers["X-Request-Id"] == "req-42"
    assert await resp.text() == "req-42"


@pytest.mark.parametrize("sent", [None, "", "x" * 129, "caf\u00e9", "tab\there"])
async def test_a_missing_or_odd_request_id_is_replaced(
    aiohttp_client: AiohttpClient, sent: str | None
) -> None:
    client = await edge_client(aiohttp_client)
    headers = {} if sent is None else {"X-Request-Id": sent}
    resp = await client.get("/echo", headers=headers)
    generated = resp.headers["X-Request-Id"]
    assert len(generated) == 32 and int(generated, 16) >= 0
    assert await resp.text() == generated
    again = await client.get("/echo", headers=headers)
    assert again.headers["X-Request-Id"] != generated  # fresh for every request


async def test_an_api_error_is_rendered_with_its_headers(aiohttp_client: AiohttpClient) -> None:
    client = await edge_client(aiohttp_client)
    resp = await client.get("/busy", headers={"X-Request-Id": "r1"})
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "2"
    assert resp.headers["X-Request-Id"] == "r1"
    assert (await error_of(resp))["code"] == "service_unavailable"


async def test_aiohttp_404_and_405_are_openai_shaped(aiohttp_client: AiohttpClient) -> None:
    client = await edge_client(aiohttp_client)
    resp = await client.get("/nowhere")
    assert resp.status == 404
    assert resp.content_type == "application/json"
    error = await error_of(resp)
    assert (error["message"], error["code"]) == ("Invalid URL (GET /nowhere)", "not_found")
    assert "X-Request-Id" in resp.headers

    resp = await client.post("/echo")
    assert resp.status == 405
    assert resp.headers["Allow"] == "GET,HEAD"  # aiohttp's own, passed on
    error = await error_of(resp)
    assert (error["message"], error["code"]) == (
        "Method not allowed (POST /echo)",
        "method_not_allowed",
    )


async def test_a_bug_is_500_without_its_traceback(
    aiohttp_client: AiohttpClient, caplog: pytest.LogCaptureFixture
) -> None:
    client = await edge_client(aiohttp_client)
    with caplog.at_level(logging.ERROR, logger="router.middleware"):
        resp = await client.get("/boom", headers={"X-Request-Id": "r2"})
    assert resp.status == 500
    assert await resp.read() == internal_error_body()
    assert resp.headers["X-Request-Id"] == "r2"
    assert any(r.exc_info and "GET /boom" in r.getMessage() for r in caplog.records)


async def test_a_redirect_passes_with_the_request_id(aiohttp_client: AiohttpClient) -> None:
    client = await edge_client(aiohttp_client)
    resp = await client.get("/moved", headers={"X-Request-Id": "r3"}, allow_redirects=False)
    assert resp.status == 302
    assert resp.headers["Location"] == "/echo"
    assert resp.headers["X-Request-Id"] == "r3"


async def test_a_started_stream_keeps_its_own_headers(aiohttp_client: AiohttpClient) -> None:
    client = await edge_client(aiohttp_client)
    resp = await client.get("/stream", headers={"X-Request-Id": "r4"})
    assert await resp.read() == b"data"
    assert resp.headers["X-Request-Id"] == "set-by-the-handler"
