"""OpenAI completion objects, chat and legacy text: the JSON response and the SSE chunks.

`ChatAnswer` and `TextAnswer` are the two `worker.generation.Answer`s: how each kind of
completion is written, whole or streamed. Key order follows OpenAI's own responses, so
byte-level diffs against them stay readable.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from contract import sse
from contract.tools import ToolCall, Tools
from worker.engine import Finished, FinishReason
from worker.logprobs import TokenLogprob, logprobs_object
from worker.tools import ToolCallParser, split_answer


def new_completion_id(prefix: str = "chatcmpl-") -> str:
    return prefix + secrets.token_hex(15)


def usage(finished: Finished) -> dict[str, int]:
    return {
        "prompt_tokens": finished.prompt_tokens,
        "completion_tokens": finished.completion_tokens,
        "total_tokens": finished.prompt_tokens + finished.completion_tokens,
    }


def tool_call_object(call: ToolCall) -> dict[str, Any]:
    return {
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments},
    }


def completion(
    completion_id: str,
    model: str,
    content: str | None,
    finished: Finished,
    tool_calls: tuple[ToolCall, ...] = (),
    logprobs: Sequence[TokenLogprob] | None = None,
) -> dict[str, Any]:
    """A chat.completion; `logprobs` None when not asked for."""
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
    if tool_calls:
        message["tool_calls"] = [tool_call_object(call) for call in tool_calls]
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None if logprobs is None else logprobs_object(logprobs),
                "finish_reason": finished.reason,
            }
        ],
        "usage": usage(finished),
        "system_fingerprint": None,
    }


class ChunkWriter:
    """Builds the frames of one streamed completion; every chunk shares id, created and model."""

    __slots__ = ("_created", "_id", "_include_usage", "_model", "_usage_trailer")

    def __init__(
        self, completion_id: str, model: str, *, include_usage: bool, usage_trailer: bool = False
    ) -> None:
        self._id = completion_id
        self._created = int(time.time())
        self._model = model
        self._include_usage = include_usage
        self._usage_trailer = usage_trailer  # see contract.sse

    def _chunk(
        self,
        delta: dict[str, Any],
        finish_reason: FinishReason | None = None,
        logprobs: Sequence[TokenLogprob] | None = None,
    ) -> bytes:
        choice_logprobs = None if logprobs is None else logprobs_object(logprobs)
        chunk: dict[str, Any] = {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
            "system_fingerprint": None,
            "choices": [
                {
                    "index": 0,
                    "delta": delta,
                    "logprobs": choice_logprobs,
                    "finish_reason": finish_reason,
                }
            ],
        }
        if self._include_usage:
            chunk["usage"] = None
        return sse.frame(chunk)

    def role(self) -> bytes:
        return self._chunk({"role": "assistant", "content": ""})

    def content(self, text: str, logprobs: Sequence[TokenLogprob] | None = None) -> bytes:
        return self._chunk({"content": text}, logprobs=logprobs)

    def tool_call(self, index: int, call: ToolCall) -> bytes:
        """OpenAI's delta format: id, type and name first, then the arguments."""
        head = {"index": index, **tool_call_object(call)}
        head["function"] = {"name": call.name, "arguments": ""}
        arguments = {"index": index, "function": {"arguments": call.arguments}}
        return self._chunk({"tool_calls": [head]}) + self._chunk({"tool_calls": [arguments]})

    def finish(self, finished: Finished) -> bytes:
        """The finish chunk, then (if asked for) the usage chunk, then [DONE]."""
        frames = self._chunk({}, finished.reason)
        if self._include_usage:
            frames += sse.frame(
                {
                    "id": self._id,
                    "object": "chat.completion.chunk",
                    "created": self._created,
                    "model": self._model,
                    "system_fingerprint": None,
                    "choices": [],
                    "usage": usage(finished),
                }
            )
        if self._usage_trailer:
            frames += sse.usage_trailer(usage(finished))
        return frames + sse.DONE


def _called(finished: Finished, called: bool) -> Finished:
    """finish_reason "tool_calls" for an answer that called tools and ended on its own."""
    if called and finished.reason == "stop":
        return replace(finished, reason="tool_calls")
    return finished


class ChatAnswer:
    """A chat completion: text, or tool calls parsed out of it when the request has tools."""

    __slots__ = ("_calls", "_chunks", "_held", "_logprobs", "_model", "_parser", "_tools")
    prompt_param = "messages"

    def __init__(
        self,
        model: str,
        tools: Tools | None,
        *,
        include_usage: bool,
        usage_trailer: bool,
        logprobs: bool = False,
    ) -> None:
        self._model = model
        self._logprobs = logprobs  # asked for: every content chunk carries its tokens' entries
        self._held: list[TokenLogprob] = []  # entries of tokens whose text is not out yet
        self._tools = tools
        self._chunks = ChunkWriter(
            new_completion_id(), model, include_usage=include_usage, usage_trailer=usage_trailer
        )
        self._parser = None if tools is None else ToolCallParser(tools)
        self._calls = 0

    def whole(
        self, text: str, finished: Finished, logprobs: Sequence[TokenLogprob] = ()
    ) -> dict[str, Any]:
        content: str | None = text
        calls: tuple[ToolCall, ...] = ()
        if self._tools is not None and text:
            content, calls = split_answer(text, self._tools)
        done = _called(finished, bool(calls))
        entries = logprobs if self._logprobs else None
        return completion(new_completion_id(), self._model, content, done, calls, entries)

    def opening(self) -> bytes:
        return self._chunks.role()

    def feed(self, text: str, logprobs: Sequence[TokenLogprob] = ()) -> bytes:
        if self._logprobs:
            self._held.extend(logprobs)
        if self._parser is None:
            return self._content(text) if text else b""
        return self._parsed(self._parser.feed(text))

    def closing(self, finished: Finished, logprobs: Sequence[TokenLogprob] = ()) -> bytes:
        if self._logprobs:
            self._held.extend(logprobs)
        held = b"" if self._parser is None else self._parsed(self._parser.finish())
        if self._held:  # tokens whose text never went out (a stop string, a tool call)
            held += self._content("")
        return held + self._chunks.finish(_called(finished, self._calls > 0))

    def _content(self, text: str) -> bytes:
        if not self._logprobs:
            return self._chunks.content(text)
        entries, self._held = self._held, []
        return self._chunks.content(text, entries)

    def _parsed(self, parts: list[str | ToolCall]) -> bytes:
        frames = b""
        for part in parts:
            if isinstance(part, ToolCall):
                frames += self._chunks.tool_call(self._calls, part)
                self._calls += 1
            elif part:
                frames += self._content(part)
        return frames


class TextAnswer:
    """A legacy text completion (`/v1/completions`): `choices[].text`, no roles, no tools."""

    __slots__ = ("_created", "_id", "_include_usage", "_model", "_usage_trailer")
    prompt_param = "prompt"

    def __init__(self, model: str, *, include_usage: bool, usage_trailer: bool) -> None:
        self._id = new_completion_id("cmpl-")
        self._created = int(time.time())
        self._model = model
        self._include_usage = include_usage
        self._usage_trailer = usage_trailer

    def _object(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self._id,
            "object": "text_completion",
            "created": self._created,
            "model": self._model,
            "choices": choices,
            "system_fingerprint": None,
        }

    @staticmethod
    def _choice(text: str, reason: FinishReason | None) -> dict[str, Any]:
        return {"text": text, "index": 0, "logprobs": None, "finish_reason": reason}

    def whole(
        self, text: str, finished: Finished, logprobs: Sequence[TokenLogprob] = ()
    ) -> dict[str, Any]:
        """`logprobs` are never asked for here (contract.text refuses them)."""
        return self._object([self._choice(text, finished.reason)]) | {"usage": usage(finished)}

    def opening(self) -> bytes:
        return b""

    def feed(self, text: str, logprobs: Sequence[TokenLogprob] = ()) -> bytes:
        return sse.frame(self._object([self._choice(text, None)])) if text else b""

    def closing(self, finished: Finished, logprobs: Sequence[TokenLogprob] = ()) -> bytes:
        frames = sse.frame(self._object([self._choice("", finished.reason)]))
        if self._include_usage:
            frames += sse.frame(self._object([]) | {"usage": usage(finished)})
        if self._usage_trailer:
            frames += sse.usage_trailer(usage(finished))
        return frames + sse.DONE
