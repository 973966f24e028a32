"""A FLOOR TO MEASURE AGAINST, NOT A PRODUCT: the least an aiohttp reverse proxy can do.

    python -m benchmarks.router_overhead.floor_relay --port 9001 --upstream http://127.0.0.1:9000

aiohttp's low-level server and one pooled `ClientSession` (uvloop when installed): each request's
body goes to the upstream at the same path, and the answer comes back with its status and
content type, a JSON body whole, an SSE stream chunk by chunk as it arrives. Nothing else: no
routing, no auth, no validation, no metrics, no timeouts beyond aiohttp's, no failover, no
header hygiene. benchmarks.router_overhead puts the router beside it so that the router's cost
reads as a multiple of what aiohttp itself costs on the same machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

import aiohttp
from aiohttp import web


def make_handler(session: aiohttp.ClientSession, upstream: str) -> web.Server:
    async def relay(request: web.BaseRequest) -> web.StreamResponse:
        body = await request.read()
        headers = {"Content-Type": request.headers.get("Content-Type", "application/json")}
        async with session.request(
            request.method, upstream + request.path_qs, data=body, headers=headers
        ) as upstream_response:
            content_type = upstream_response.headers.get("Content-Type", "application/json")
            if not content_type.startswith("text/event-stream"):
                return web.Response(
                    body=await upstream_response.read(),
                    status=upstream_response.status,
                    headers={"Content-Type": content_type},
                )
            response = web.StreamResponse(
                status=upstream_response.status,
                headers={"Content-Type": content_type, "Cache-Control": "no-cache"},
            )
            await response.prepare(request)
            async for chunk in upstream_response.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    return web.Server(relay)


async def serve(host: str, port: int, upstream: str) -> None:
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:
        runner = web.ServerRunner(make_handler(session, upstream.rstrip("/")))
        await runner.setup()
        site = web.TCPSite(runner, host, port, backlog=4096)
        await site.start()
        stop = asyncio.Event()  # SIGTERM ends it cleanly, so a profiler around it can write
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        try:
            await stop.wait()
        finally:
            await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.router_overhead.floor_relay")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="base URL, e.g. http://127.0.0.1:9000")
    args = parser.parse_args(argv)
    runner = asyncio.run
    with contextlib.suppress(ImportError):
        import uvloop

        runner = uvloop.run
    with contextlib.suppress(KeyboardInterrupt):
        runner(serve(args.host, args.port, args.upstream))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
