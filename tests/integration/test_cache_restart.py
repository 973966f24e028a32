"""Cache-aware routing with real processes: redis-server, fake-engine workers that advertise the
prefixes they cache, a router with `--policy cache-aware`. A conversation's next turn is routed
as a hit on what its worker advertises; a worker restarted under the same id (kill -9, as a
crash) empties what the router believes it holds within one heartbeat of its new record, long
before the router would age the old record out."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.processes import router_sees
from tests.processes import (
    MODEL_ID,
    HttpService,
    RedisServer,
    router_process,
    wait_until,
    worker_process,
)

HEARTBEAT_S = 0.5
WORKER_ARGS = (
    *("--slots", "4", "--fake-ttft-ms", "5", "--fake-tokens-per-s", "500"),
    *("--heartbeat-interval-s", str(HEARTBEAT_S)),
)
# Ageing cannot be what clears a restarted worker's beliefs: it would take 30 s.
ROUTER_ARGS = ("--policy", "cache-aware", "--worker-stale-s", "30", "--registry-refresh-s", "5")
SYSTEM = {"role": "system", "content": "You answer questions about a long document. " * 30}


class Stack:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.redis = RedisServer.create(tmp)
        self.started: list[HttpService] = []
        self.router: HttpService | None = None

    def worker(self, worker_id: str) -> HttpService:
        proc = worker_process(self.tmp, self.redis.url, worker_id, engine="fake", extra=WORKER_ARGS)
        self.started.append(proc)
        proc.start()
        proc.wait_healthy(timeout_s=30)
        return proc

    def chat(self, messages: list[dict[str, str]]) -> str:
        """One turn through the router; the assistant's reply."""
        assert self.router is not None
        body = orjson.dumps({"model": MODEL_ID, "messages": messages, "max_tokens": 8})
        request = urllib.request.Request(
            self.router.url + "/v1/chat/completions",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            answer: Any = orjson.loads(response.read())
        reply: str = answer["choices"][0]["message"]["content"]
        return reply

    def samples(self, name: str, label: str) -> dict[str, float]:
        """The router's samples of `name`, by the value of their `label`."""
        assert self.router is not None
        with urllib.request.urlopen(self.router.url + "/metrics", timeout=5) as response:
            text = response.read().decode()
        return {
            sample.labels[label]: sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name
        }

    def prefixes(self) -> dict[str, float]:
        """What the router believes each worker caches: prefix count by worker id."""
        return self.samples("router_worker_prefixes", "worker")

    def decisions(self, outcome: str) -> float:
        return self.samples("router_cache_decisions_total", "outcome").get(outcome, 0.0)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    stack = Stack(tmp_path)
    stack.redis.start()
    try:
        yield stack
    finally:
        for proc in reversed(stack.started):
            proc.stop(timeout_s=15)
        stack.redis.stop()


def test_a_worker_restart_empties_what_the_router_believes_it_holds(stack: Stack) -> None:
    workers = {w: stack.worker(w) for w in ("w0", "w1")}
    router = router_process(stack.tmp, stack.redis.url, extra=ROUTER_ARGS)
    stack.started.append(router)
    router.start()
    router.wait_healthy(timeout_s=30)
    stack.router = router
    wait_until(lambda: router_sees(router.url, 2), 15, "the router to see both workers")

    messages = [SYSTEM, {"role": "user", "content": "What is the first chapter about?"}]
    messages.append({"role": "assistant", "content": stack.chat(messages)})
    wait_until(lambda: sum(stack.prefixes().values()) > 0, 5, "a worker to advertise the turn")
    holder = max(stack.prefixes().items(), key=lambda item: item[1])[0]

    # The next turn goes where the first one is cached, and says so.
    messages.append({"role": "user", "content": "And the second?"})
    messages.append({"role": "assistant", "content": stack.chat(messages)})
    assert stack.decisions("hit") == 1

    workers[holder].kill()  # SIGKILL by PID: its record lingers in Redis until its TTL
    restarted = stack.worker(holder)
    healthy_at = time.monotonic()
    wait_until(lambda: stack.prefixes().get(holder) == 0.0, 5, "the router to forget what it held")
    # The restarted worker registers right after it listens; its first record holds nothing.
    assert time.monotonic() - healthy_at <= HEARTBEAT_S + 1.0
    assert restarted.alive()

    # Nobody holds the conversation now: the next turn is placed by hashing, not a stale hit.
    messages.append({"role": "user", "content": "And the third?"})
    stack.chat(messages)
    assert stack.decisions("hit") == 1
    assert stack.decisions("hash") == 2  # the first turn and this one
