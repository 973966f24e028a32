"""Tool calls over the worker's HTTP surface, with the fake engine's deterministic call: the
message and SSE delta shapes, finish_reason, and the 400s naming `tool_choice`. (The fake
converts no grammar: schemas a grammar cannot enforce are tested on the real engines.)"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from .conftest import MODEL, StartWorker

CHAT = "/v1/chat/completions"
TOOLS = [
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}},
    {"type": "function", "function": {"name": "noop"}},
]
NAMED = {"type": "function", "function": {"name": "noop"}}
BODY: dict[str, Any] = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "What time is it?"}],
    "tools": TOOLS,
}


def events(raw: bytes) -> list[dict[str, Any]]:
    frames = [f.removeprefix(b"data: ") for f in raw.split(b"\n\n") if f]
    assert frames[-1] == b"[DONE]"
    return [orjson.loads(f) for f in frames[:-1]]


@pytest.mark.parametrize(("choice", "name"), [("required", "get_time"), (NAMED, "noop")])
async def test_a_forced_call_is_the_message(
    start_worker: StartWorker, choice: Any, name: str
) -> None:
    client = await start_worker()
    resp = await client.post(CHAT, json={**BODY, "tool_choice": choice})
    assert resp.status == 200
    body = await resp.json()
    choice0 = body["choices"][0]
    assert choice0["finish_reason"] == "tool_calls"
    message = choice0["message"]
    assert message["content"] is None
    [call] = message["tool_calls"]
    assert call["id"].startswith("call_") and call["type"] == "function"
    assert call["function"] == {"name": name, "arguments": "{}"}


async def test_a_streamed_call_follows_openais_delta_format(start_worker: StartWorker) -> None:
    client = await start_worker()
    resp = await client.post(CHAT, json={**BODY, "tool_choice": NAMED, "stream": True})
    chunks = events(await resp.read())
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[0] == {"role": "assistant", "content": ""}
    head, arguments = deltas[1]["tool_calls"][0], deltas[2]["tool_calls"][0]
    assert list(head) == ["index", "id", "type", "function"]
    assert head["index"] == 0 and head["id"].startswith("call_")
    assert head["function"] == {"name": "noop", "arguments": ""}
    assert arguments == {"index": 0, "function": {"arguments": "{}"}}
    assert deltas[3:] == [{}]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


async def test_auto_passes_text_through(start_worker: StartWorker) -> None:
    client = await start_worker()
    body = await (await client.post(CHAT, json=BODY)).json()
    choice = body["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["content"].startswith(" The quick")
    assert "tool_calls" not in choice["message"]


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tools": None, "tool_choice": "auto"}, "tool_choice"),
    ],
    ids=["unknown-function", "choice-without-tools"],
)
async def test_bad_tool_requests_are_400s_naming_the_field(
    start_worker: StartWorker, fields: dict[str, Any], param: str
) -> None:
    client = await start_worker()
    resp = await client.post(CHAT, json={**BODY, **fields})
    assert resp.status == 400
    assert (await resp.json())["error"]["param"] == param
