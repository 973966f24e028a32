"""The floor the router is measured against: aiohttp's low-level server and one pooled
ClientSession, relaying each request to one upstream and its answer back, nothing else (no
validation, routing, metrics or failover). A yardstick, not a product.
`python -m benchmarks.profiles.floor PORT UPSTREAM_URL`.
"""

from __future__ import annotations

import sys

from aiohttp import ClientSession, TCPConnector, web

from benchmarks.profiles.upstream import Handler, serve_forever
from contract.sse import EVENT_STREAM
from contract.sse import HEADERS as SSE_HEADERS


def relay(upstream: str) -> Handler:
    session: ClientSession | None = None

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        nonlocal session
        if session is None:
            session = ClientSession(connector=TCPConnector(limit=0), auto_decompress=False)
        body = await request.read()
        headers = {"Content-Type": "application/json"}
        async with session.post(upstream + request.path, data=body, headers=headers) as answer:
            if answer.content_type != EVENT_STREAM:
                return web.Response(
                    body=await answer.read(), status=answer.status, content_type=JSON
                )
            out = web.StreamResponse(status=answer.status, headers=SSE_HEADERS)
            await out.prepare(request)
            async for chunk in answer.content.iter_any():
                await out.write(chunk)
            await out.write_eof()
            return out

    return handle


JSON = "application/json"


def main(argv: list[str]) -> None:
    serve_forever(relay(argv[1]), int(argv[0]))


if __name__ == "__main__":
    main(sys.argv[1:])
