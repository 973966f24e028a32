"""A mock OpenAI upstream at the cost of aiohttp's low-level server: one fixed chat completion,
or a fixed SSE stream written as one chunk per frame. `python -m benchmarks.profiles.upstream PORT`.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Final

import orjson
from aiohttp import web

from contract.sse import EVENT_STREAM

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]

FRAMES: Final = 8  # content frames per stream, then the finish frame and [DONE]
_ANSWER: Final = orjson.dumps(
    {
        "id": "chatcmpl-mock",
        "object": "chat.completion",
        "created": 0,
        "model": "mock",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "hello " * 8},
                "finish_reason": "length",
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 8, "total_tokens": 20},
    }
)


def _frame(delta: dict[str, str], finish: str | None = None) -> bytes:
    chunk = {
        "id": "chatcmpl-mock",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "mock",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


_STREAM: Final = (
    _frame({"role": "assistant", "content": ""}),
    *(_frame({"content": "hello "}) for _ in range(FRAMES)),
    _frame({}, "length"),
    b"data: [DONE]\n\n",
)


async def handle(request: web.BaseRequest) -> web.StreamResponse:
    if b'"stream":true' not in await request.read():  # the driver's compact JSON
        return web.Response(body=_ANSWER, content_type="application/json")
    out = web.StreamResponse(headers={"Content-Type": EVENT_STREAM, "Cache-Control": "no-cache"})
    await out.prepare(request)
    for frame in _STREAM:
        await out.write(frame)
    await out.write_eof()
    return out


def serve_forever(handler: Handler, port: int) -> None:
    """Serve `handler` with aiohttp's low-level server on loopback, on uvloop, until killed."""
    import uvloop

    async def serve() -> None:
        runner = web.ServerRunner(web.Server(handler, access_log=None))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        await stop.wait()  # then return: a profiler around us writes its stats
        await runner.cleanup()

    uvloop.run(serve())


def main(argv: list[str]) -> None:
    serve_forever(handle, int(argv[0]))


if __name__ == "__main__":
    main(sys.argv[1:])
