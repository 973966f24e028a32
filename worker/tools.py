"""Tool calls on the worker: the prompt that offers tools, and the parser that finds calls in
the model's answer, whole or streamed.

A chat template that knows tools (its source uses a `tools` variable, as Hermes, Qwen and Llama 3
templates do) gets them, and the history's calls and results, in Hugging Face's shapes. Any other
template (SmolLM2's among them) gets a generic prompt: a system block listing the functions'
JSON schemas and the call format, earlier calls written in that format, and tool results as user
turns in `<tool_response>` tags. Either way the model answers a call as

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

which is what worker.grammar enforces when calls are forced. `ToolCallParser` turns an answer
into content and `ToolCall`s as it streams: text that may still become a call is held back
until it is known to be one.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence
from typing import Any, Final

import orjson

from contract.tools import ToolCall, Tools
from contract.wire import Message

OPEN: Final = "<tool_call>"
CLOSE: Final = "</tool_call>"
USES_TOOLS: Final = re.compile(r"\btools\b")
# Chat templates know system/user/assistant; OpenAI's newer "developer" role means system.
ROLE_ALIASES: Final = {"developer": "system"}
GENERIC_PROMPT: Final = """You can call functions. Their JSON schemas:
<tools>
{tools}
</tools>
To call a function, answer with only this, once per call:
<tool_call>
{{"name": <function name>, "arguments": <the arguments as a JSON object>}}
</tool_call>"""


def template_knows_tools(source: str) -> bool:
    return bool(USES_TOOLS.search(source))


def new_call_id() -> str:
    return "call_" + secrets.token_hex(12)


def _arguments(text: str) -> Any:
    """Arguments as templates want them: an object when the text is JSON, else the text."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


def _call_block(call: ToolCall) -> str:
    body = orjson.dumps({"name": call.name, "arguments": _arguments(call.arguments)}).decode()
    return f"{OPEN}\n{body}\n{CLOSE}"


def native_chat(
    messages: Sequence[Message], tools: Tools | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """Messages and tools in the shapes Hugging Face chat templates take."""
    chat: list[dict[str, Any]] = []
    for m in messages:
        item: dict[str, Any] = {"role": ROLE_ALIASES.get(m.role, m.role), "content": m.content}
        if m.tool_calls:
            item["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": _arguments(c.arguments)},
                }
                for c in m.tool_calls
            ]
        if m.tool_call_id is not None:
            item["tool_call_id"] = m.tool_call_id
        chat.append(item)
    return chat, None if tools is None else _tool_list(tools)


def _tool_list(tools: Tools) -> list[dict[str, Any]]:
    out = []
    for f in tools.functions:
        function: dict[str, Any] = {"name": f.name}
        if f.description is not None:
            function["description"] = f.description
        function["parameters"] = orjson.loads(f.parameters)
        out.append({"type": "function", "function": function})
    return out


def generic_chat(messages: Sequence[Message], tools: Tools | None) -> list[dict[str, str]]:
    """Messages for a template that knows no tools: the tools in a system block, calls and
    results written into the turns as text."""
    chat: list[dict[str, str]] = []
    for m in messages:
        role, content = ROLE_ALIASES.get(m.role, m.role), m.content
        if m.tool_calls:
            blocks = "\n".join(_call_block(c) for c in m.tool_calls)
            content = f"{content}\n{blocks}" if content else blocks
        elif m.role == "tool":
            role, content = "user", f"<tool_response>\n{content}\n</tool_response>"
        chat.append({"role": role, "content": content})
    if tools is None:
        return chat
    listing = "\n".join(orjson.dumps(t).decode() for t in _tool_list(tools))
    block = GENERIC_PROMPT.format(tools=listing)
    if tools.choice == "required":
        block += "\nYou must call a function now."
    if chat and chat[0]["role"] == "system":
        chat[0] = {"role": "system", "content": f"{chat[0]['content']}\n\n{block}"}
    else:
        chat.insert(0, {"role": "system", "content": block})
    return chat


class ToolCallParser:
    """Splits a streamed answer into content and tool calls. `feed` and `finish` return what
    is known so far: strings are content, ToolCalls are complete calls."""

    __slots__ = ("_buffer", "_calls", "_mode", "_tools")

    def __init__(self, tools: Tools) -> None:
        self._tools = tools
        self._buffer = ""
        self._mode = "undecided"  # then "calls" or "text"
        self._calls = 0

    @property
    def called(self) -> bool:
        return self._calls > 0

    def feed(self, text: str) -> list[str | ToolCall]:
        if self._mode == "text":
            return [text] if text else []
        self._buffer += text
        if self._mode == "undecided":
            head = self._buffer.lstrip()
            if OPEN.startswith(head):
                return []  # may still become a call
            if not head.startswith(OPEN):
                self._mode = "text"
                out, self._buffer = self._buffer, ""
                return [out]
            self._mode = "calls"
        return self._complete_blocks()

    def finish(self) -> list[str | ToolCall]:
        """What is left when the answer ends: an unclosed call if it parses, else text."""
        rest, self._buffer = self._buffer, ""
        head = rest.strip()
        if not head:
            return []
        if self._mode == "calls" and head.startswith(OPEN):
            call = self._parse(head[len(OPEN) :].removesuffix(CLOSE))
            if call is not None:
                return self._take(call)
        return [] if self.called else [rest]

    def _complete_blocks(self) -> list[str | ToolCall]:
        out: list[str | ToolCall] = []
        while True:
            head = self._buffer.lstrip()
            end = head.find(CLOSE)
            if not head.startswith(OPEN) or end < 0:
                return out
            block, self._buffer = head[len(OPEN) : end], head[end + len(CLOSE) :]
            call = self._parse(block)
            out += [head[: end + len(CLOSE)]] if call is None else self._take(call)

    def _take(self, call: ToolCall) -> list[str | ToolCall]:
        if self._calls and not self._tools.parallel:
            return []  # parallel_tool_calls=false: the first call only
        self._calls += 1
        return [call]

    def _parse(self, block: str) -> ToolCall | None:
        try:
            data = orjson.loads(block)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            return None
        arguments = data.get("arguments", {})
        if isinstance(arguments, str):
            arguments = _arguments(arguments)
        if self._tools.function(data["name"]) is None or not isinstance(arguments, dict):
            return None
        return ToolCall(new_call_id(), data["name"], orjson.dumps(arguments).decode())


def split_answer(text: str, tools: Tools) -> tuple[str | None, tuple[ToolCall, ...]]:
    """A whole answer's content (None when it is only calls) and its calls."""
    parser = ToolCallParser(tools)
    parts = parser.feed(text) + parser.finish()
    calls = tuple(p for p in parts if isinstance(p, ToolCall))
    content = "".join(p for p in parts if isinstance(p, str))
    if calls and not content.strip():
        return None, calls
    return content, calls
