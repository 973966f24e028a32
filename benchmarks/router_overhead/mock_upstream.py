"""A mock OpenAI chat server cheap enough not to be the bottleneck of the proxies measured.

    python -m benchmarks.router_overhead.mock_upstream --port 9000 [--chunks 16] [--chunk-gap-ms 20]

HTTP/1.1 on a bare asyncio protocol (uvloop when installed): no framework, no per-request
objects beyond the parse, one prebuilt answer. `POST /v1/chat/completions` answers a fixed chat
completion, or, when the body asks for `"stream": true`, a paced SSE stream: the role event at
once, then `--chunks` content events `--chunk-gap-ms` apart, the usage event when
`stream_options.include_usage` asks for it, and `[DONE]`. `GET /health` and `GET /v1/models`
answer 200 (what worker.agent and vllm-router probe). Keep-alive; request bodies with
Content-Length or chunked.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from typing import cast

import orjson

MODEL_ID = "bench-model"
USAGE = {"prompt_tokens": 8, "completion_tokens": 8, "total_tokens": 16}
COMPLETION = orjson.dumps(
    {
        "id": "chatcmpl-mock",
        "object": "chat.completion",
        "created": 0,
        "model": MODEL_ID,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "one two three four five six seven"},
                "finish_reason": "stop",
            }
        ],
        "usage": USAGE,
    }
)
MODELS = orjson.dumps({"object": "list", "data": [{"id": MODEL_ID, "object": "model"}]})
SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)


def _response(body: bytes, status: bytes = b"200 OK") -> bytes:
    head = b"HTTP/1.1 %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
    return head % (status, len(body)) + body


def _event(delta: dict[str, str] | None, usage: dict[str, int] | None = None) -> bytes:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": None}]
    event = {"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 0,
             "model": MODEL_ID, "choices": choices}  # fmt: skip
    if usage is not None:
        event["usage"] = usage
    return _chunk(b"data: " + orjson.dumps(event) + b"\n\n")


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


PLAIN = _response(COMPLETION)
MODELS_RESPONSE = _response(MODELS)
HEALTH = _response(b'{"status":"ok"}')
NOT_FOUND = _response(b'{"error":{"message":"not found"}}', b"404 Not Found")
ROLE = _event({"role": "assistant", "content": ""})
USAGE_EVENT = _event(None, USAGE)
DONE = _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"


def _asks_stream(body: bytes) -> bool:
    return b'"stream"' in body and b'"stream":true' in body.replace(b" ", b"")


class MockProtocol(asyncio.Protocol):
    """One connection: requests parsed in order; a stream holds the connection until done."""

    def __init__(self, chunks: int, gap_s: float) -> None:
        self.chunks, self.gap_s = chunks, gap_s
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.streaming = False
        self.task: asyncio.Task[None] | None = None  # the stream in progress

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.streaming:
            self._serve()

    def _serve(self) -> None:
        assert self.transport is not None
        while (request := self._take_request()) is not None:
            target, body = request
            if target.startswith(b"POST") and _asks_stream(body):
                self.streaming = True
                self.task = asyncio.get_running_loop().create_task(self._stream(body))
                return
            if target.startswith(b"POST"):
                self.transport.write(PLAIN)
            elif target.startswith(b"GET /HEALTH"):
                self.transport.write(HEALTH)
            elif target.startswith(b"GET /V1/MODELS"):
                self.transport.write(MODELS_RESPONSE)
            else:
                self.transport.write(NOT_FOUND)

    def _take_request(self) -> tuple[bytes, bytes] | None:
        """The next complete request's line and body, removed from the buffer; None if partial."""
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return None
        head = bytes(self.buffer[:end]).lower()
        start = end + 4
        if b"transfer-encoding: chunked" in head:
            body = bytearray()
            pos = start
            while True:
                eol = self.buffer.find(b"\r\n", pos)
                if eol < 0:
                    return None
                size = int(bytes(self.buffer[pos:eol]).split(b";")[0], 16)
                if len(self.buffer) < eol + 2 + size + 2:
                    return None
                body += self.buffer[eol + 2 : eol + 2 + size]
                pos = eol + 2 + size + 2
                if size == 0:
                    break
            del self.buffer[:pos]
            return head.split(b"\r\n", 1)[0].upper(), bytes(body)
        length = 0
        marker = head.find(b"content-length:")
        if marker >= 0:
            length = int(head[marker + 15 :].split(b"\r\n", 1)[0])
        if len(self.buffer) < start + length:
            return None
        content = bytes(self.buffer[start : start + length])
        del self.buffer[: start + length]
        return head.split(b"\r\n", 1)[0].upper(), content

    async def _stream(self, body: bytes) -> None:
        transport = self.transport
        assert transport is not None
        include_usage = b'"include_usage":true' in body.replace(b" ", b"")
        transport.write(SSE_HEAD + ROLE)
        for i in range(self.chunks):
            await asyncio.sleep(self.gap_s)
            if transport.is_closing():
                return
            transport.write(_event({"content": f" w{i}"}))
        transport.write((USAGE_EVENT if include_usage else b"") + DONE)
        self.streaming = False
        if self.buffer:
            self._serve()


async def serve(host: str, port: int, chunks: int, gap_s: float) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: MockProtocol(chunks, gap_s), host, port, backlog=4096)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.router_overhead.mock_upstream")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--chunks", type=int, default=16, help="content events per stream")
    parser.add_argument("--chunk-gap-ms", type=float, default=20.0, help="pause between them")
    args = parser.parse_args(argv)
    runner = asyncio.run
    with contextlib.suppress(ImportError):
        import uvloop

        runner = uvloop.run
    with contextlib.suppress(KeyboardInterrupt):
        runner(serve(args.host, args.port, args.chunks, args.chunk_gap_ms / 1e3))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
