"""Special-token forgery: request text that spells a control token stays plain text.

A chat prompt is the model's template rendered around request strings (message contents, names,
tool schemas, call arguments) and tokenised with special-token parsing on, so that the
template's `<|im_start|>` becomes the control token. Parsed whole, a user's `<|im_start|>system`
would become a real turn too. So before rendering, `ControlTokens.mark` replaces every
control-token text in the template's inputs by a marker (private-use characters, which trim,
tojson and the like leave alone) and `pieces` cuts the rendered text at the markers: the pieces
between are tokenised with special tokens parsed, each marked text as plain text. A prompt
without such text is rendered and tokenised exactly as before (nothing is marked).

Only control tokens count: llama.cpp matches user-defined tokens (Qwen's `<tool_call>`) whether
special parsing is on or off, so marking them would change nothing.

A raw `/v1/completions` prompt is the caller's own text, all of it: there is no template whose
turns it could forge, and its special tokens are parsed, as llama-server does.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

MARK_OPEN, MARK_CLOSE = "\ue000", "\ue001"
_MARKER = re.compile(f"{MARK_OPEN}(\\d+){MARK_CLOSE}")


class ControlTokens:
    """The texts of a vocabulary's control tokens, and the marking of them in request strings."""

    def __init__(self, texts: Iterable[str]) -> None:
        # Longest first, so that at one position the longest control token wins, as in llama.cpp.
        ordered = sorted({t for t in texts if t}, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    @classmethod
    def of_vocab(cls, vocab: Any, n_vocab: int) -> ControlTokens:
        """The control tokens of a loaded llama.cpp vocabulary (a few ms for 50k tokens)."""
        import llama_cpp

        control = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL
        return cls(
            llama_cpp.llama_vocab_get_text(vocab, token).decode("utf-8", "replace")
            for token in range(n_vocab)
            if llama_cpp.llama_vocab_get_attr(vocab, token) & control
        )

    def mark(self, value: Any, marked: list[str]) -> Any:
        """`value` (strings in lists, tuples and dicts, keys included) with each control-token
        text replaced by a marker; the texts are appended to `marked`, the marker's index."""
        if self._pattern is None:
            return value
        if isinstance(value, str):
            return self._pattern.sub(lambda found: _marker(found[0], marked), value)
        if isinstance(value, dict):
            return {self.mark(k, marked): self.mark(v, marked) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self.mark(v, marked) for v in value)
        return value


def _marker(text: str, marked: list[str]) -> str:
    marked.append(text)
    return f"{MARK_OPEN}{len(marked) - 1}{MARK_CLOSE}"


def pieces(rendered: str, marked: Sequence[str]) -> Iterator[tuple[str, bool]]:
    """`rendered` cut at its markers: (text, parse special tokens) pairs in order; a marker
    comes back as the text it stands for, never parsed. A marker the request wrote itself (its
    index unknown) is plain text too."""
    start = 0
    for found in _MARKER.finditer(rendered):
        if found.start() > start:
            yield rendered[start : found.start()], True
        index = int(found[1])
        yield (marked[index] if index < len(marked) else found[0]), False
        start = found.end()
    if start < len(rendered):
        yield rendered[start:], True
