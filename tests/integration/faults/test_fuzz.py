"""Property-based fuzzing of the real router app: thousands of odd requests, not one 500.

The router app runs on a test server in front of a fake worker (a real aiohttp server) and a real
Redis, exactly as in tests/router. Hypothesis generates chat requests whose every field may have
the wrong type, huge or non-finite numbers, odd unicode (lone surrogates, NULs, right-to-left
marks) or be missing; raw and mutated bodies; odd content types and encodings; odd methods and
paths. Every answer must be below 500, and every error an OpenAI error body.

Requests that are not well-formed HTTP (an unparseable request line or headers, a body that does
not decode as its Content-Encoding says) never reach the app: aiohttp's parser answers those with
its own plain-text 400 before any handler runs. They are counted apart.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import ClientSession, ClientTimeout
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from contract.registry import publish_worker
from router.app import create_app
from router.config import RouterConfig
from tests.processes import RedisServer
from tests.router.fakes import MODEL, TTL_MS, FakeWorker, make_record

from .load import report

pytestmark = pytest.mark.slow

MAX_BODY_BYTES = 64 * 1024
EXAMPLES = {"valid": 600, "structured": 1200, "mutated": 500, "raw": 400, "routes": 300}


def fuzz(name: str) -> settings:
    return settings(
        max_examples=EXAMPLES[name],
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )


# -- strategies ------------------------------------------------------------------------------------

odd_text = st.text(
    st.characters(exclude_categories=()),  # surrogates too: sent as \\ud800-style escapes
    max_size=12,
) | st.sampled_from(["", "\x00", "\u202e", "\ufeff", "🦊" * 50, "é" * 3, "\\", '"', "null"])
big_int = st.integers(min_value=-(2**80), max_value=2**80)
number = big_int | st.floats() | st.sampled_from([1e308, -1e308, 5e-324, 2**63, -(2**63) - 1])
leaf = st.none() | st.booleans() | number | odd_text
json_value = st.recursive(
    leaf,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(odd_text, inner, max_size=3),
    max_leaves=6,
)
role = st.sampled_from(["system", "developer", "user", "assistant", "tool", "USER", ""]) | leaf
message = (
    st.fixed_dictionaries(
        {"role": role, "content": odd_text | json_value},
        optional={"name": odd_text, "extra": json_value},
    )
    | json_value
)
valid_message = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant"]), "content": odd_text}
)
chat = st.fixed_dictionaries(
    {},
    optional={
        "model": st.just(MODEL) | st.just(MODEL) | odd_text | json_value,
        "messages": st.lists(valid_message, min_size=1, max_size=3)
        | st.lists(message, max_size=3)
        | json_value,
        "stream": st.booleans() | json_value,
        "stream_options": st.fixed_dictionaries({}, optional={"include_usage": json_value})
        | json_value,
        "max_tokens": st.integers(min_value=-5, max_value=64) | number | json_value,
        "max_completion_tokens": big_int | json_value,
        "temperature": number | json_value,
        "top_p": number | json_value,
        "presence_penalty": number,
        "frequency_penalty": number,
        "n": big_int,
        "seed": big_int | json_value,
        "stop": odd_text | st.lists(odd_text, max_size=6) | json_value,
        "user": odd_text,
    },
)
# In range everywhere, odd only in its text: these go through to the worker.
plain_text = st.text(st.characters(codec="utf-8"), max_size=40)
valid_chat = st.fixed_dictionaries(
    {
        "model": st.just(MODEL),
        "messages": st.lists(
            st.fixed_dictionaries(
                {"role": st.sampled_from(["system", "user", "assistant"]), "content": plain_text}
            ),
            min_size=1,
            max_size=4,
        ),
    },
    optional={
        "stream": st.booleans(),
        "max_tokens": st.integers(1, 64),
        "temperature": st.floats(0, 2),
        "top_p": st.floats(0, 1),
        "stop": plain_text | st.lists(plain_text, max_size=4),
        "seed": st.integers(-(2**63), 2**63 - 1),
        "presence_penalty": st.floats(-2, 2),
        "user": plain_text,
    },
)
chat = st.builds(  # plus unknown keys of any kind
    lambda known, unknown: {**unknown, **known},
    chat,
    st.dictionaries(odd_text, json_value, max_size=2),
)
header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
content_type = (
    st.sampled_from(
        [
            "application/json",
            "application/json; charset=utf-8",
            "APPLICATION/JSON",
            "application/json;;;",
            "application/jsonx",
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "",
        ]
    )
    | header_text
)


def encode(value: Any, ascii_only: bool) -> bytes:
    """JSON as a client might send it: the stdlib allows huge ints and NaN/Infinity tokens."""
    return json.dumps(value, ensure_ascii=ascii_only, allow_nan=True).encode(
        "utf-8", errors="surrogatepass"
    )


def mutate(data: bytes, edits: list[tuple[int, int, bytes]]) -> bytes:
    for at, cut, insert in edits:
        at %= len(data) + 1
        data = data[:at] + insert + data[at + cut :]
    return data


# -- the harness ---------------------------------------------------------------------------------


class Harness:
    """The router app on a test server, one fake worker, a client; answers checked and counted."""

    def __init__(self, server: TestServer, worker_server: TestServer, session: ClientSession):
        self.server = server
        self.worker_server = worker_server
        self.session = session
        self.statuses: Counter[int] = Counter()
        self.tried = 0
        self.http_layer = 0  # refused by aiohttp's HTTP parser, before the app

    @classmethod
    async def start(cls, redis_url: str) -> Harness:
        worker = FakeWorker("fuzz-worker")
        worker_server = TestServer(worker.app())
        await worker_server.start_server()
        redis: Redis[bytes] = Redis.from_url(redis_url)
        url = str(worker_server.make_url("")).rstrip("/")
        await publish_worker(redis, make_record("fuzz-worker", url, slots=64), TTL_MS)
        await redis.aclose()  # type: ignore[attr-defined]  # types-redis predates it
        config = RouterConfig(
            redis_url=redis_url,
            auth=False,
            max_body_bytes=MAX_BODY_BYTES,
            body_timeout_s=2.0,
            worker_stale_s=60.0,
        )
        server = TestServer(create_app(config))
        await server.start_server()
        session = ClientSession(timeout=ClientTimeout(total=10))
        return cls(server, worker_server, session)

    async def close(self) -> None:
        await self.session.close()
        await self.server.close()
        await self.worker_server.close()

    async def send(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str]
    ) -> None:
        self.tried += 1
        url = self.server.make_url(path)
        async with self.session.request(method, url, data=body, headers=headers) as resp:
            data = await resp.read()
        self.statuses[resp.status] += 1
        where = f"{method} {path} {headers} {body!r:.300}"
        assert resp.status < 500, f"{resp.status} for {where}: {data[:300]!r}"
        if resp.status == 400 and "X-Request-Id" not in resp.headers:
            # Not a well-formed HTTP message (a body that does not decode as its
            # Content-Encoding says): aiohttp's parser refused it before the app saw it.
            assert resp.content_type == "text/plain", where
            self.http_layer += 1
            return
        if resp.status >= 400 and method != "HEAD":
            error = orjson.loads(data)["error"]
            assert {"message", "type", "param", "code"} <= set(error), where
            assert isinstance(error["message"], str), where


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[tuple[asyncio.Runner, Harness]]:
    redis = RedisServer.create(tmp_path)
    redis.start()
    try:
        with asyncio.Runner() as runner:
            harness = runner.run(Harness.start(redis.url))
            try:
                yield runner, harness
            finally:
                runner.run(harness.close())
    finally:
        redis.stop()


CHAT_PATHS = (
    "/v1/chat/completions",
    "/proj_ABC123/v1/chat/completions",
    "/proj_ABC123/my-endpoint/v1/chat/completions",
)


def test_fuzzing_never_gets_a_500(harness: tuple[asyncio.Runner, Harness]) -> None:
    runner, h = harness
    json_headers = {"Content-Type": "application/json"}

    @fuzz("valid")
    @given(request=valid_chat, ascii_only=st.booleans())
    def valid(request: dict[str, Any], ascii_only: bool) -> None:
        runner.run(h.send("POST", CHAT_PATHS[0], encode(request, ascii_only), json_headers))

    @fuzz("structured")
    @given(request=chat, ascii_only=st.booleans(), path=st.sampled_from(CHAT_PATHS))
    def structured(request: dict[str, Any], ascii_only: bool, path: str) -> None:
        runner.run(h.send("POST", path, encode(request, ascii_only), json_headers))

    @fuzz("mutated")
    @given(
        base=chat,
        edits=st.lists(
            st.tuples(st.integers(0, 400), st.integers(0, 8), st.binary(max_size=6)),
            min_size=1,
            max_size=4,
        ),
    )
    def mutated(base: dict[str, Any], edits: list[tuple[int, int, bytes]]) -> None:
        runner.run(h.send("POST", CHAT_PATHS[0], mutate(encode(base, True), edits), json_headers))

    @fuzz("raw")
    @given(
        body=st.binary(max_size=200)
        | st.integers(MAX_BODY_BYTES - 64, 2 * MAX_BODY_BYTES).map(
            lambda n: b'{"model": "' + b"x" * n + b'"}'
        ),
        ctype=content_type,
        encoding=st.sampled_from([None, "gzip", "deflate", "identity"]),
    )
    def raw(body: bytes, ctype: str, encoding: str | None) -> None:
        headers = {"Content-Type": ctype}
        if encoding is not None:
            headers["Content-Encoding"] = encoding
        runner.run(h.send("POST", CHAT_PATHS[0], body, headers))

    @fuzz("routes")
    @given(
        method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]),
        path=st.sampled_from(
            [*CHAT_PATHS, "/v1/models", "/v1/models/x", "/health", "/metrics", "/", "/v1"]
        )
        | st.text(st.characters(min_codepoint=0x21, max_codepoint=0x10FFFF), max_size=30).map(
            lambda p: "/v1/models/" + p
        ),
        body=st.none() | st.binary(max_size=50),
    )
    def routes(method: str, path: str, body: bytes | None) -> None:
        if method in ("GET", "HEAD") and path == "/metrics":
            return  # not an error path, and slow to render thousands of times
        runner.run(h.send(method, path, body, {}))

    tried: dict[str, int] = {}
    for name, test in (
        ("valid", valid),
        ("structured", structured),
        ("mutated", mutated),
        ("raw", raw),
        ("routes", routes),
    ):
        before = h.tried
        test()
        tried[name] = h.tried - before
    figures = {
        "inputs_tried": h.tried,
        "by_strategy": tried,
        "statuses": dict(sorted(h.statuses.items())),
        "refused_by_the_http_parser_400": h.http_layer,
        "status_500_or_above": sum(n for s, n in h.statuses.items() if s >= 500),
    }
    report("fuzzing the router app with hypothesis", figures)
    assert figures["status_500_or_above"] == 0
    assert h.statuses[200] >= 500  # plenty of inputs were valid and went through
