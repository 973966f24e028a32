"""The engine seam: engine errors, the prompt checks, the completion limit and the relay."""

from __future__ import annotations

import asyncio
import threading

import pytest

from contract.wire import SamplingParams
from worker.engine import (
    EngineError,
    EngineStopped,
    Finished,
    InvalidPrompt,
    Item,
    Output,
    PromptTooLong,
    check_prompt,
    completion_limit,
    relay,
    with_default_length,
)


def test_engine_errors_form_one_tree_and_carry_their_facts() -> None:
    too_long = PromptTooLong(n_ctx=64, prompt_tokens=80)
    assert (too_long.n_ctx, too_long.prompt_tokens) == (64, 80)
    assert InvalidPrompt("no").message == "no"
    assert EngineStopped().message == "The engine is not running."
    assert EngineStopped("The engine stopped.").message == "The engine stopped."
    for error in (too_long, InvalidPrompt("no"), EngineStopped()):
        assert isinstance(error, EngineError)


@pytest.mark.parametrize(("tokens", "n_ctx"), [(64, 64), (65, 64), (1000, 8)])
def test_a_prompt_that_leaves_no_room_is_too_long(tokens: int, n_ctx: int) -> None:
    with pytest.raises(PromptTooLong) as caught:
        check_prompt(tokens, n_ctx)
    assert (caught.value.n_ctx, caught.value.prompt_tokens) == (n_ctx, tokens)


def test_an_empty_prompt_is_invalid_and_a_fitting_one_passes() -> None:
    with pytest.raises(InvalidPrompt, match="empty prompt"):
        check_prompt(0, 64)
    check_prompt(63, 64)  # one token of room is enough


def test_the_default_length_applies_only_when_the_request_names_none() -> None:
    assert with_default_length(SamplingParams(), 512).max_tokens == 512
    assert with_default_length(SamplingParams(max_tokens=7), 512).max_tokens == 7
    assert with_default_length(SamplingParams(), None).max_tokens is None


def test_the_completion_limit_is_the_room_left_shortened_by_max_tokens() -> None:
    assert completion_limit(64, 60, None) == 4
    assert completion_limit(64, 60, 2) == 2
    assert completion_limit(64, 60, 100) == 4


async def collect(out: asyncio.Queue[Item], cancel: threading.Event) -> list[Output]:
    return [item async for item in relay(out, cancel)]


async def test_relay_yields_up_to_finished_then_sets_cancel() -> None:
    out: asyncio.Queue[Item] = asyncio.Queue()
    cancel = threading.Event()
    done = Finished("stop", 3, 2)
    for item in ("a", "b", done, "never"):
        out.put_nowait(item)
    assert await collect(out, cancel) == ["a", "b", done]
    assert cancel.is_set()


async def test_relay_raises_what_the_thread_sent() -> None:
    out: asyncio.Queue[Item] = asyncio.Queue()
    cancel = threading.Event()
    out.put_nowait("a")
    out.put_nowait(EngineStopped("The engine stopped."))
    with pytest.raises(EngineStopped):
        await collect(out, cancel)
    assert cancel.is_set()


async def test_a_consumer_that_leaves_sets_cancel() -> None:
    out: asyncio.Queue[Item] = asyncio.Queue()
    cancel = threading.Event()
    outputs = relay(out, cancel)
    out.put_nowait("a")
    assert await anext(outputs) == "a"
    assert not cancel.is_set()
    await outputs.aclose()
    assert cancel.is_set()

    cancel = threading.Event()
    task = asyncio.create_task(collect(out, cancel))  # waits on an empty queue
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cancel.is_set()
