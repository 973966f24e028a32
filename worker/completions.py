"""OpenAI completion objects, chat and legacy text: the JSON response and the SSE chunks.

`ChatAnswer` and `TextAnswer` are the two `worker.generation.Answer`s: how each kind of
completion is written, whole or streamed. Key order follows OpenAI's own responses, so
byte-level diffs against them stay readable.
"""

from __future__ import annotations

import copy
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from contract import sse
from contract.tools import ToolCall, Tools
from worker.engine import Finished, FinishReason
from worker.logprobs import TokenLogprob, logprobs_object
from worker.tools import ToolCallParser, split_answer


def new_completion_id(prefix: str = "chatcmpl-") -> str:
    return prefix + secrets.token_hex(15)


@dataclass(frozen=True, slots=True)
class Choice:
    """What one choice of a whole answer came to: its text, finish and tokens' logprobs."""

    text: str
    finished: Finished
    logprobs: Sequence[TokenLogprob] = ()


def usage(*finished: Finished) -> dict[str, Any]:
    """One answer's usage over its choices: the prompt counted once, their completions summed.
    `prompt_tokens_details.cached_tokens` is there always, 0 on a miss, as OpenAI and
    llama-server send it: the first choice's (a later choice of the same prompt hits the
    cache by construction, which says nothing about the request)."""
    first = finished[0]
    completion_tokens = sum(done.completion_tokens for done in finished)
    return {
        "prompt_tokens": first.prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": first.prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": first.cached_tokens},
    }


def tool_call_object(call: ToolCall) -> dict[str, Any]:
    return {
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments},
    }


def chat_choice(
    index: int,
    content: str | None,
    finished: Finished,
    tool_calls: tuple[ToolCall, ...] = (),
    logprobs: Sequence[TokenLogprob] | None = None,
) -> dict[str, Any]:
    """One choice of a chat.completion; `logprobs` None when not asked for."""
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
    if tool_calls:
        message["tool_calls"] = [tool_call_object(call) for call in tool_calls]
    return {
        "index": index,
        "message": message,
        "logprobs": None if logprobs is None else logprobs_object(logprobs),
        "finish_reason": finished.reason,
    }


def completion(
    completion_id: str, model: str, choices: list[dict[str, Any]], usage: dict[str, Any]
) -> dict[str, Any]:
    """A chat.completion."""
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": usage,
        "system_fingerprint": None,
    }


class ChunkWriter:
    """Builds the frames of one streamed completion; every chunk shares id, created and model,
    and carries the index of its choice."""

    __slots__ = ("_created", "_id", "_include_usage", "_index", "_model", "_usage_trailer")

    def __init__(
        self, completion_id: str, model: str, *, include_usage: bool, usage_trailer: bool = False
    ) -> None:
        self._id = completion_id
        self._created = int(time.time())
        self._model = model
        self._include_usage = include_usage
        self._usage_trailer = usage_trailer  # see contract.sse
        self._index = 0

    def choice(self, index: int) -> ChunkWriter:
        """A writer of the same completion for choice `index`."""
        writer = copy.copy(self)
        writer._index = index
        return writer

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
                    "index": self._index,
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

    def finish(self, reason: FinishReason) -> bytes:
        """This choice's finish chunk."""
        return self._chunk({}, reason)

    def end(self, usage: dict[str, Any]) -> bytes:
        """What ends the stream, once after every choice: the usage chunk (if asked for), the
        usage trailer (if asked for), then [DONE]."""
        frames = b""
        if self._include_usage:
            frames += sse.frame(
                {
                    "id": self._id,
                    "object": "chat.completion.chunk",
                    "created": self._created,
                    "model": self._model,
                    "system_fingerprint": None,
                    "choices": [],
                    "usage": usage,
                }
            )
        if self._usage_trailer:
            frames += sse.usage_trailer(usage)
        return frames + sse.DONE


def _called(finished: Finished, called: bool) -> Finished:
    """finish_reason "tool_calls" for an answer that called tools and ended on its own."""
    if called and finished.reason == "stop":
        return replace(finished, reason="tool_calls")
    return finished


class ChatAnswer:
    """A chat completion: text, or tool calls parsed out of it when the request has tools."""

    __slots__ = ("_chunks", "_logprobs", "_model", "_tools")
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
        self._tools = tools
        self._chunks = ChunkWriter(
            new_completion_id(), model, include_usage=include_usage, usage_trailer=usage_trailer
        )

    def whole(self, choices: Sequence[Choice]) -> dict[str, Any]:
        body = [self._whole_choice(index, choice) for index, choice in enumerate(choices)]
        total = usage(*(choice.finished for choice in choices))
        return completion(new_completion_id(), self._model, body, total)

    def _whole_choice(self, index: int, choice: Choice) -> dict[str, Any]:
        content: str | None = choice.text
        calls: tuple[ToolCall, ...] = ()
        if self._tools is not None and choice.text:
            content, calls = split_answer(choice.text, self._tools)
        done = _called(choice.finished, bool(calls))
        entries = choice.logprobs if self._logprobs else None
        return chat_choice(index, content, done, calls, entries)

    def choice(self, index: int) -> ChatChoiceStream:
        return ChatChoiceStream(self._chunks.choice(index), self._tools, logprobs=self._logprobs)

    def end(self, finished: Sequence[Finished]) -> bytes:
        return self._chunks.end(usage(*finished))


class ChatChoiceStream:
    """One streamed chat choice: its role delta, content or tool-call deltas, finish chunk."""

    __slots__ = ("_calls", "_chunks", "_held", "_logprobs", "_parser")

    def __init__(self, chunks: ChunkWriter, tools: Tools | None, *, logprobs: bool) -> None:
        self._chunks = chunks
        self._logprobs = logprobs
        self._held: list[TokenLogprob] = []  # entries of tokens whose text is not out yet
        self._parser = None if tools is None else ToolCallParser(tools)
        self._calls = 0

    def opening(self) -> bytes:
        return self._chunks.role()

    def feed(self, text: str, logprobs: Sequence[TokenLogprob] = ()) -> bytes:
        if self._logprobs:
            self._held.extend(logprobs)
        if self._parser is None:
            return self._content(text) if text else b""
        return self._parsed(self._parser.feed(text))

    def finish(self, finished: Finished, logprobs: Sequence[TokenLogprob] = ()) -> bytes:
        if self._logprobs:
            self._held.extend(logprobs)
        held = b"" if self._parser is None else self._parsed(self._parser.finish())
        if self._held:  # tokens whose text never went out (a stop string, a tool call)
            held += self._content("")
        return held + self._chunks.finish(_called(finished, self._calls > 0).reason)

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
    def _choice(index: int, text: str, reason: FinishReason | None) -> dict[str, Any]:
        return {"text": text, "index": index, "logprobs": None, "finish_reason": reason}

    def whole(self, choices: Sequence[Choice]) -> dict[str, Any]:
        """Logprobs are never asked for here (contract.text refuses them)."""
        body = [self._choice(i, c.text, c.finished.reason) for i, c in enumerate(choices)]
        return self._object(body) | {"usage": usage(*(c.finished for c in choices))}

    def chunk(self, index: int, text: str, reason: FinishReason | None = None) -> bytes:
        return sse.frame(self._object([self._choice(index, text, reason)]))

    def choice(self, index: int) -> TextChoiceStream:
        return TextChoiceStream(self, index)

    def end(self, finished: Sequence[Finished]) -> bytes:
        frames = b""
        if self._include_usage:
            frames += sse.frame(self._object([]) | {"usage": usage(*finished)})
        if self._usage_trailer:
            frames += sse.usage_trailer(usage(*finished))
        return frames + sse.DONE


class TextChoiceStream:
    """One streamed text choice: its text chunks, then its finish chunk."""

    __slots__ = ("_answer", "_index")

    def __init__(self, answer: TextAnswer, index: int) -> None:
        self._answer = answer
        self._index = index

    def opening(self) -> bytes:
        return b""

    def feed(self, text: str, logprobs: Sequence[TokenLogprob] = ()) -> bytes:
        return self._answer.chunk(self._index, text) if text else b""

    def finish(self, finished: Finished, logprobs: Sequence[TokenLogprob] = ()) -> bytes:
        return self._answer.chunk(self._index, "", finished.reason)
