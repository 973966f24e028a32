"""What a benchmark sends: synthetic prompts of chosen lengths, or conversations from a JSONL file.

Synthetic request i is a pure function of (seed, i): its prompt length and max_tokens are drawn
from the given distributions and its words from a fixed vocabulary with a generator seeded by
`f"{seed}:{i}"`, so runs with the same seed send the same requests in the same order whatever
their length or concurrency, and no two requests share a prompt prefix by construction.

Prompt length is in words, each a common English word separated by one space. The fake engine
counts a prompt as its words plus 4 per message; a real tokenizer gives about 1-1.5 tokens per
word. The token counts a run reports come from the server's `usage`, not from this estimate.

Length distributions (`LengthDist.parse`): `N` or `fixed:N`; `uniform:LO,HI` (inclusive);
`normal:MEAN,STD` (rounded, clipped to >= 1).

JSONL: one object per line, any of
- `{"messages": [{"role": ..., "content": ...}, ...], "max_tokens": N}` (OpenAI chat form; a
  trailing assistant message is the reference answer: dropped, and its word count is the
  max_tokens when none is given),
- `{"prompt": "...", "max_tokens": N}`,
- `{"conversations": [{"from": "human", "value": ...}, {"from": "gpt", "value": ...}]}`
  (ShareGPT form: the first human turn is the prompt, the next gpt turn the reference answer).
Blank lines and lines starting with `#` are skipped. Requests cycle through the file in a seeded
shuffled order; `--output-len`, when given, overrides every max_tokens.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import orjson

DistKind = Literal["fixed", "uniform", "normal"]

# A small, fixed vocabulary of common words; every word is a single token for most tokenizers.
_WORDS = (
    "time year people way day man thing woman life child world school state family student "
    "group country problem hand part place case week company system program question work "
    "government number night point home water room mother area money story fact month lot "
    "right study book eye job word business issue side kind head house service friend father "
    "power hour game line end member law car city community name president team minute idea "
    "kid body information back parent face others level office door health person art war "
    "history party result change morning reason research girl guy moment air teacher force "
    "education"
)
VOCABULARY = tuple(_WORDS.split())


@dataclass(frozen=True, slots=True)
class LengthDist:
    kind: DistKind
    a: float
    b: float = 0.0

    def __post_init__(self) -> None:
        if self.kind == "fixed" and not (self.a >= 1 and float(self.a).is_integer()):
            raise ValueError(f"fixed length must be an integer >= 1, got {self.a}")
        if self.kind == "uniform" and not (1 <= self.a <= self.b):
            raise ValueError(f"uniform:LO,HI needs 1 <= LO <= HI, got {self.a},{self.b}")
        if self.kind == "normal" and not (self.a >= 1 and self.b >= 0):
            raise ValueError(f"normal:MEAN,STD needs MEAN >= 1 and STD >= 0, got {self.a},{self.b}")

    @classmethod
    def parse(cls, text: str) -> LengthDist:
        kind, sep, rest = text.strip().partition(":")
        if not sep:
            kind, rest = "fixed", kind
        try:
            numbers = [float(x) for x in rest.split(",")]
        except ValueError:
            raise ValueError(f"length {text!r}: expected numbers after {kind!r}") from None
        if kind == "fixed" and len(numbers) == 1:
            return cls("fixed", numbers[0])
        if kind in ("uniform", "normal") and len(numbers) == 2:
            return cls(kind, numbers[0], numbers[1])  # type: ignore[arg-type]
        raise ValueError(f"length {text!r}: expected N, fixed:N, uniform:LO,HI or normal:MEAN,STD")

    def sample(self, rng: random.Random) -> int:
        if self.kind == "fixed":
            return int(self.a)
        if self.kind == "uniform":
            return rng.randint(int(self.a), int(self.b))
        return max(1, round(rng.gauss(self.a, self.b)))

    @property
    def mean(self) -> float:
        """The nominal mean (before clipping, for normal)."""
        return (self.a + self.b) / 2 if self.kind == "uniform" else self.a

    def __str__(self) -> str:
        if self.kind == "fixed":
            return f"fixed:{int(self.a)}"
        return f"{self.kind}:{self.a:g},{self.b:g}"


@dataclass(frozen=True, slots=True)
class RequestInput:
    """One request's content; the body adds model, stream and the run's extras."""

    messages: tuple[tuple[str, str], ...]  # (role, content)
    max_tokens: int | None
    prompt_words: int | None = None

    def payload(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "messages": [{"role": role, "content": content} for role, content in self.messages]
        }
        if self.max_tokens is not None:
            out["max_tokens"] = self.max_tokens
        return out


class Workload(Protocol):
    def get(self, index: int) -> RequestInput: ...

    def describe(self) -> dict[str, Any]: ...


def prompt_words(rng: random.Random, count: int) -> str:
    return " ".join(rng.choice(VOCABULARY) for _ in range(count))


@dataclass(frozen=True, slots=True)
class SyntheticWorkload:
    input_len: LengthDist
    output_len: LengthDist | None  # None: no max_tokens (the server decides)
    seed: int = 0
    system_prompt: str | None = None

    def get(self, index: int) -> RequestInput:
        rng = random.Random(f"{self.seed}:{index}")
        words = self.input_len.sample(rng)
        max_tokens = None if self.output_len is None else self.output_len.sample(rng)
        user = ("user", prompt_words(rng, words))
        messages = (user,) if self.system_prompt is None else (("system", self.system_prompt), user)
        return RequestInput(messages=messages, max_tokens=max_tokens, prompt_words=words)

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "synthetic",
            "input_len_words": str(self.input_len),
            "output_len_tokens": None if self.output_len is None else str(self.output_len),
            "seed": self.seed,
        }


@dataclass(frozen=True, slots=True)
class DatasetWorkload:
    """Conversations from a file, in one seeded shuffled order, cycled."""

    items: tuple[RequestInput, ...]
    source: str
    seed: int = 0
    output_len: LengthDist | None = None  # overrides every item's max_tokens
    order: tuple[int, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.items:
            raise ValueError(f"{self.source}: no requests in the dataset")
        order = list(range(len(self.items)))
        random.Random(f"{self.seed}:order").shuffle(order)
        object.__setattr__(self, "order", tuple(order))  # derived once; the class is frozen

    def get(self, index: int) -> RequestInput:
        item = self.items[self.order[index % len(self.items)]]
        if self.output_len is None:
            return item
        rng = random.Random(f"{self.seed}:{index}")
        return RequestInput(item.messages, self.output_len.sample(rng), item.prompt_words)

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "jsonl",
            "path": self.source,
            "conversations": len(self.items),
            "output_len_tokens": None if self.output_len is None else str(self.output_len),
            "seed": self.seed,
        }


class DatasetError(ValueError):
    pass


def load_jsonl(path: Path, seed: int = 0, output_len: LengthDist | None = None) -> DatasetWorkload:
    """Read a JSONL dataset (formats in the module docstring); raise DatasetError with the line
    number on the first bad line."""
    items: list[RequestInput] = []
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            line = raw.strip()
            if not line or line.startswith(b"#"):
                continue
            try:
                items.append(parse_item(orjson.loads(line)))
            except (orjson.JSONDecodeError, ValueError, TypeError, KeyError) as exc:
                raise DatasetError(f"{path}:{number}: {exc}") from None
    return DatasetWorkload(tuple(items), str(path), seed, output_len)


def parse_item(data: Any) -> RequestInput:
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object")
    max_tokens = data.get("max_tokens")
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
        raise ValueError(f"max_tokens must be an integer >= 1, got {max_tokens!r}")
    if "messages" in data:
        messages = _messages(data["messages"])
        if len(messages) > 1 and messages[-1][0] == "assistant":
            reference = messages[-1][1]
            messages = messages[:-1]
            if max_tokens is None:
                max_tokens = max(1, len(reference.split()))
    elif "prompt" in data:
        prompt = data["prompt"]
        if not isinstance(prompt, str) or not prompt:
            raise ValueError("'prompt' must be a non-empty string")
        messages = (("user", prompt),)
    elif "conversations" in data:
        messages, answer = _sharegpt(data["conversations"])
        if max_tokens is None and answer is not None:
            max_tokens = max(1, len(answer.split()))
    else:
        raise ValueError("expected a 'messages', 'prompt' or 'conversations' key")
    if messages[-1][0] == "assistant":
        raise ValueError("the conversation must not end with the assistant's turn alone")
    words = sum(len(content.split()) for _, content in messages)
    return RequestInput(messages=messages, max_tokens=max_tokens, prompt_words=words)


def _messages(raw: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(raw, list) or not raw:
        raise ValueError("'messages' must be a non-empty list")
    out: list[tuple[str, str]] = []
    for m in raw:
        if not isinstance(m, dict):
            raise ValueError("each message must be an object")
        role, content = m.get("role"), m.get("content")
        if not isinstance(role, str) or not isinstance(content, str):
            raise ValueError("each message needs string 'role' and 'content'")
        out.append((role, content))
    return tuple(out)


def _sharegpt(raw: Any) -> tuple[tuple[tuple[str, str], ...], str | None]:
    if not isinstance(raw, list):
        raise ValueError("'conversations' must be a list")
    turns: Sequence[Any] = raw
    for i, turn in enumerate(turns):
        if isinstance(turn, dict) and turn.get("from") == "human":
            prompt = turn.get("value")
            if not isinstance(prompt, str) or not prompt:
                raise ValueError("the human turn needs a non-empty 'value'")
            reply = turns[i + 1] if i + 1 < len(turns) else None
            reference = None
            if isinstance(reply, dict) and reply.get("from") == "gpt":
                value = reply.get("value")
                reference = value if isinstance(value, str) else None
            return (("user", prompt),), reference
    raise ValueError("no human turn in 'conversations'")
