"""Stop-string matching over streamed text, shared by every engine.

Text arrives in pieces (one token's worth at a time) and a stop string may span pieces, so the
matcher holds back any tail that could still turn into a stop string and releases it only once
it is resolved. The stop string itself is never emitted, nor anything after it.
"""

from __future__ import annotations

from collections.abc import Sequence


class StopMatcher:
    __slots__ = ("_held", "_stops")

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._held = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Add a piece; return (text safe to emit now, whether a stop string was hit)."""
        if not self._stops:
            return text, False
        buffer = self._held + text
        # The stop that completes first wins (then the longer one), as if fed a character at a
        # time, so the result never depends on how the text was split into pieces.
        hits = [(i + len(s), i) for s in self._stops if (i := buffer.find(s)) >= 0]
        if hits:
            self._held = ""
            return buffer[: min(hits)[1]], True
        keep = self._partial_suffix(buffer)
        self._held = buffer[len(buffer) - keep :]
        return buffer[: len(buffer) - keep], False

    def flush(self) -> str:
        """Generation ended without a stop string: whatever was held back is real output."""
        held, self._held = self._held, ""
        return held

    def _partial_suffix(self, buffer: str) -> int:
        """Length of the longest tail of `buffer` that is a proper prefix of some stop string."""
        best = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(buffer)), best, -1):
                if buffer.endswith(stop[:n]):
                    best = n
                    break
        return best
