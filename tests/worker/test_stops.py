"""Stop-string matching with hold-back, fed one piece at a time as an engine would."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from worker.stops import StopMatcher


def run(pieces: list[str], stops: tuple[str, ...]) -> tuple[list[str], bool]:
    """What a client would see, piece by piece, and whether a stop string ended it."""
    matcher = StopMatcher(stops)
    seen = []
    for piece in pieces:
        text, stopped = matcher.feed(piece)
        if text:
            seen.append(text)
        if stopped:
            return seen, True
    tail = matcher.flush()
    if tail:
        seen.append(tail)
    return seen, False


def reference(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
    """Character-at-a-time semantics: the first stop string to complete ends the text."""
    for end in range(1, len(text) + 1):
        done = [s for s in stops if s and text[:end].endswith(s)]
        if done:
            return text[: end - max(len(s) for s in done)], True
    return text, False


def test_no_stops_passes_everything_through() -> None:
    assert run(["a", "b", "c"], ()) == (["a", "b", "c"], False)


def test_stop_inside_one_piece_cuts_it() -> None:
    assert run(["Hello END world"], ("END",)) == (["Hello "], True)


def test_stop_split_across_pieces_is_never_emitted() -> None:
    seen, stopped = run(["one, tw", "o, th", "ree"], ("two",))
    assert (seen, stopped) == (["one, "], True)


def test_partial_match_is_held_back_then_released() -> None:
    matcher = StopMatcher(("<stop>",))
    assert matcher.feed("abc<st") == ("abc", False)
    assert matcher.feed("x") == ("<stx", False)
    assert matcher.flush() == ""


def test_held_text_is_flushed_at_end_of_generation() -> None:
    assert run(["abc", "<st"], ("<stop>",)) == (["abc", "<st"], False)


def test_first_stop_to_complete_wins() -> None:
    assert run(["xx B yy A"], ("A", "B")) == (["xx "], True)
    # "b" completes before "abb" does, however the text is split.
    assert run(["abb"], ("abb", "b")) == (["a"], True)
    assert run(["ab", "b"], ("abb", "b")) == (["a"], True)


def test_stop_at_the_very_start_emits_nothing() -> None:
    assert run(["\n\nrest"], ("\n\n",)) == ([], True)


def test_empty_stop_strings_are_ignored() -> None:
    assert run(["abc"], ("",)) == (["abc"], False)


@settings(max_examples=500, deadline=None)
@given(
    text=st.text(alphabet="ab\n", max_size=30),
    stops=st.lists(st.text(alphabet="ab\n", min_size=1, max_size=4), max_size=4),
    cuts=st.lists(st.integers(min_value=0, max_value=30), max_size=10),
)
def test_any_split_matches_whole_text_reference(
    text: str, stops: list[str], cuts: list[int]
) -> None:
    bounds = sorted({0, len(text), *(c for c in cuts if c <= len(text))})
    pieces = [text[a:b] for a, b in itertools.pairwise(bounds)]
    seen, stopped = run(pieces, tuple(stops))
    assert ("".join(seen), stopped) == reference(text, tuple(stops))
