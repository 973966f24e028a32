"""OpenAI chat-completion objects: the JSON response and the SSE chunks.

Key order follows OpenAI's own responses, so byte-level diffs against them stay readable.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from contract import sse
from worker.engine import Finished, FinishReason


def new_completion_id() -> str:
    return "chatcmpl-" + secrets.token_hex(15)


def usage(finished: Finished) -> dict[str, int]:
    return {
        "prompt_tokens": finished.prompt_tokens,
        "completion_tokens": finished.completion_tokens,
        "total_tokens": finished.prompt_tokens + finished.completion_tokens,
    }


def completion(completion_id: str, model: str, content: str, finished: Finished) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": None},
                "logprobs": None,
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

    def _chunk(self, delta: dict[str, str], finish_reason: FinishReason | None = None) -> bytes:
        chunk: dict[str, Any] = {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
            "system_fingerprint": None,
            "choices": [
                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            ],
        }
        if self._include_usage:
            chunk["usage"] = None
        return sse.frame(chunk)

    def role(self) -> bytes:
        return self._chunk({"role": "assistant", "content": ""})

    def content(self, text: str) -> bytes:
        return self._chunk({"content": text})

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
