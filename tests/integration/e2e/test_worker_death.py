"""A worker killed with -9 leaves the registry within 3 s and the router keeps serving."""

from __future__ import annotations

import time

import openai
import pytest
import redis
from openai.types.chat import ChatCompletionMessageParam

from contract import registry
from tests.integration.e2e.conftest import Stack
from tests.processes import MODEL_ID, http_json, wait_until

pytestmark = pytest.mark.llama

HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say hello."}]


def test_killed_worker_leaves_registry_and_requests_keep_succeeding(own_stack: Stack) -> None:
    victim, survivor = own_stack.workers
    c = openai.OpenAI(base_url=own_stack.base_url, api_key="x", max_retries=0, timeout=60)
    with c, redis.Redis.from_url(own_stack.redis.url) as r:
        assert r.exists(registry.worker_key(victim.name))
        victim.kill()
        killed_at = time.monotonic()
        # Requests sent right away may still pick the dead worker: the router fails over.
        for _ in range(6):
            resp = c.chat.completions.create(model=MODEL_ID, messages=HELLO, max_tokens=4)
            assert resp.choices[0].message.content
        wait_until(
            lambda: not r.exists(registry.worker_key(victim.name)), 3.0, "the record to expire"
        )
        wait_until(
            lambda: http_json(own_stack.router.url + "/health")[1]["workers"] == 1,
            3.0,
            "the router to drop the worker",
        )
        gone_after_s = time.monotonic() - killed_at
        assert gone_after_s <= 3.0
        assert registry.worker_key(survivor.name).encode() in r.keys("worker:*")
        for _ in range(3):
            resp = c.chat.completions.create(model=MODEL_ID, messages=HELLO, max_tokens=4)
            assert resp.choices[0].finish_reason in ("stop", "length")
