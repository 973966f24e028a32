"""One worker as this replica sees it: its record, its load counters and its circuit breaker.

Pure: imports neither aiohttp nor redis. Two owners write an `Upstream`, each through its own
methods: the registry view (router.view) applies each newer record of the worker (`update`), and
router.admission alone changes load and breaker state as requests begin, end and fail (`begin`,
`end`, `refused`, `breaker`). The balancing policies (router.balancer) read `load` only.

A worker's load, as this replica estimates it, is what the worker last reported (running +
waiting) plus the requests this replica started since that report, minus those it finished since
(a request that was already counted in the report and then finished lowers the load too). Each
report resets the deltas, so estimation errors last at most one heartbeat. A worker that just
refused a request (no connection, or full) counts as loaded by FAILED_PENALTY until its next
report, so it is tried last rather than first again. `in_flight` is the plain count of this
replica's open requests to the worker: admission sends it no more than its `slots` at once.

`prefixes` is what the worker's latest record says its KV cache holds (contract.prefixes), as
a set for the cache-aware policy's lookups, rebuilt when a record changes it, never per request.
A restarted worker's first record advertises nothing, so what this replica believes it holds
is emptied as soon as that record arrives.
"""

from __future__ import annotations

import enum
from typing import Final

from yarl import URL

from contract.registry import WorkerApi, WorkerRecord
from router.breaker import Breaker

FAILED_PENALTY: Final = 1_000_000


class Api(enum.IntEnum):
    """The worker APIs a router relays to; each indexes an Upstream's `urls`."""

    CHAT = 0
    COMPLETIONS = 1
    EMBEDDINGS = 2


API_PATHS: Final = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")  # by Api


def worker_urls(base_url: str) -> tuple[URL, ...]:
    """The worker's URL of each API, indexed by `Api`."""
    base = base_url.rstrip("/")
    return tuple(URL(base + path) for path in API_PATHS)


class Upstream:
    """One worker's latest record, this replica's load counters to it, and its breaker."""

    __slots__ = (
        "_finished",
        "_penalty",
        "_reported",
        "_started",
        "breaker",
        "in_flight",
        "openai",
        "prefixes",
        "record",
        "seen_at",
        "slots",
        "urls",
        "worker_id",
    )

    def __init__(self, record: WorkerRecord, seen_at: float) -> None:
        self.worker_id = record.worker_id
        self.record = record
        self.seen_at = seen_at  # the view's clock, when it last saw the heartbeat advance
        self.urls = worker_urls(record.url)  # parsed once, not per request
        # A stock OpenAI server (worker.agent): no usage trailer, so the relay asks for usage.
        self.openai = record.api is WorkerApi.OPENAI
        self.breaker = Breaker()
        self.prefixes = frozenset(record.prefixes)
        self.slots = max(1, record.slots)
        self._reported = max(0, record.queue_depth)
        self._started = 0
        self._finished = 0
        self._penalty = 0
        self.in_flight = 0

    @property
    def has_room(self) -> bool:
        return self.in_flight < self.slots

    @property
    def load(self) -> int:
        return max(0, self._reported + self._started - self._finished) + self._penalty

    # -- the view's side ---------------------------------------------------------------------

    def update(self, record: WorkerRecord, *, reported: bool) -> None:
        """A newer record of this worker; `reported`: its heartbeat advanced, so its load report
        replaces this replica's estimate."""
        old = self.record
        self.record = record
        self.slots = max(1, record.slots)
        if record.url != old.url:
            self.urls = worker_urls(record.url)
        self.openai = record.api is WorkerApi.OPENAI
        if record.url != old.url or record.started_ms != old.started_ms:
            self.breaker = Breaker()  # another process now: judge it afresh
        if record.prefixes != old.prefixes:
            self.prefixes = frozenset(record.prefixes)
        if reported:
            self._reported = max(0, record.queue_depth)
            self._started = 0
            self._finished = 0
            self._penalty = 0

    # -- admission's side --------------------------------------------------------------------

    def begin(self) -> None:
        self._started += 1
        self.in_flight += 1

    def end(self) -> None:
        self._finished += 1
        if self.in_flight > 0:
            self.in_flight -= 1

    def refused(self) -> None:
        """It could not take a request; prefer every other worker until it reports again."""
        self._penalty = FAILED_PENALTY
