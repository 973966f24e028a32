"""A chat request's affinity (router.affinity), and the router app routing by it under the
cache-aware policy (fake workers whose records advertise prefixes)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from contract.errors import InvalidRequest
from contract.prefixes import boundaries, conversation_key
from contract.registry import publish_worker
from contract.wire import parse_chat_request
from router.affinity import SESSION_HEADER, affinity_of, chat_affinity, parse_affine_chat
from router.appkeys import METRICS, POLICY, VIEW
from router.balancer import CacheAware, LeastLoaded
from router.upstream import Upstream
from tests.waits import eventually

from .fakes import MODEL, TTL_MS, RouterFactory, StartWorker, make_record
from .test_handlers import CHAT, JSON_HEADERS, app_of, sample

SYSTEM = {"role": "system", "content": "Be brief."}


def turns(n: int) -> list[dict[str, Any]]:
    """A conversation's messages at its n-th turn."""
    messages: list[dict[str, Any]] = [SYSTEM, {"role": "user", "content": "q0"}]
    for i in range(1, n):
        messages += [
            {"role": "assistant", "content": f"a{i}"},
            {"role": "user", "content": f"q{i}"},
        ]
    return messages


def test_the_boundaries_are_the_contracts_and_the_key_is_the_conversations() -> None:
    found = affinity_of(turns(3), [{"type": "function", "function": {"name": "f"}}])
    assert found is not None
    tools = [{"type": "function", "function": {"name": "f"}}]
    assert list(found.boundaries) == boundaries(turns(3), tools)
    key = conversation_key(turns(3), tools)
    assert key is not None and found.key == key.encode()
    later = affinity_of(turns(5), tools)
    assert later is not None and later.key == found.key  # every turn, one key


def test_a_session_id_or_user_names_the_conversation() -> None:
    chat = parse_affine_chat(orjson.dumps({"model": MODEL, "messages": turns(1), "user": "u-7"}))
    by_user = chat_affinity(chat, {})
    assert by_user is not None and by_user.key == b"u-7"
    by_header = chat_affinity(chat, {SESSION_HEADER: "s-1"})
    assert by_header is not None and by_header.key == b"s-1"
    assert affinity_of(turns(1), session="x" * 1000) == affinity_of(turns(1), session="x" * 256)
    assert affinity_of("not a list") is None
    assert affinity_of([{"role": "system", "content": "only"}]) is not None


def test_the_affine_parse_is_the_chat_parse() -> None:
    body = orjson.dumps({"model": MODEL, "messages": turns(2), "max_tokens": 5, "stream": True})
    chat = parse_affine_chat(body)
    assert chat.request == parse_chat_request(body)
    assert (chat.model, chat.stream) == (MODEL, True)
    with pytest.raises(InvalidRequest):
        parse_affine_chat(orjson.dumps({"model": MODEL, "messages": []}))


def test_an_upstream_believes_what_its_latest_record_advertises() -> None:
    record = replace(make_record("w", "http://127.0.0.1:1"), prefixes=("0" * 16, "1" * 16))
    upstream = Upstream(record, seen_at=0.0)
    assert upstream.prefixes == {"0" * 16, "1" * 16}
    kept = upstream.prefixes
    upstream.update(replace(record, heartbeat_ms=record.heartbeat_ms + 1), reported=True)
    assert upstream.prefixes is kept  # unchanged: not rebuilt
    restarted = replace(record, started_ms=record.started_ms + 5, prefixes=())
    upstream.update(restarted, reported=True)
    assert upstream.prefixes == frozenset()


async def test_the_router_sends_a_turn_where_its_prefix_is_advertised(
    start_worker: StartWorker, start_router: RouterFactory, redis: Redis[bytes]
) -> None:
    cold, warm = await start_worker("w1"), await start_worker("w2")
    found = affinity_of(turns(1))
    assert found is not None
    # w2 advertises the first turn (the digest a worker advertises: all of a request's messages).
    record = replace(make_record("w2", warm.url), prefixes=(found.boundaries[-1].digest,))
    await publish_worker(redis, record, TTL_MS)
    client = await start_router(policy="cache-aware")
    assert isinstance(app_of(client)[POLICY], CacheAware)
    view = app_of(client)[VIEW]
    await eventually(lambda: bool(view.upstreams.get("w2") and view.upstreams["w2"].prefixes))
    for _ in range(3):
        body = orjson.dumps({"model": MODEL, "messages": turns(2)})
        response = await client.post(CHAT, data=body, headers=JSON_HEADERS)
        assert response.status == 200
    assert (len(cold.bodies), len(warm.bodies)) == (0, 3)
    assert sample(client, "router_cache_decisions_total", model=MODEL, outcome="hit") == 3
    # Another endpoint has no affinity: least-loaded, counted as such.
    response = await client.post(
        "/v1/completions", data=orjson.dumps({"model": MODEL, "prompt": "hi"}), headers=JSON_HEADERS
    )
    assert response.status == 200
    assert sample(client, "router_cache_decisions_total", model=MODEL, outcome="none") == 1


async def test_other_policies_compute_no_affinity(
    start_worker: StartWorker, start_router: RouterFactory
) -> None:
    await start_worker("w1")
    client = await start_router()
    assert isinstance(app_of(client)[POLICY], LeastLoaded)
    response = await client.post(
        CHAT, data=orjson.dumps({"model": MODEL, "messages": turns(1)}), headers=JSON_HEADERS
    )
    assert response.status == 200
    registry = app_of(client)[METRICS].registry
    assert registry.get_sample_value("router_cache_decisions_total", {"model": MODEL}) is None
    found = [m for m in registry.collect() if m.name == "router_cache_decisions"]
    assert found and not found[0].samples  # the family exists, with no series at all
