"""What the registrar (worker.agent) knows of a stock OpenAI-compatible server: health and load.

`UpstreamProbe.read` asks the server once. llama.cpp's `llama-server` answers `GET /health`
(200 once its model is loaded, 503 while loading) and `GET /slots` (one object per slot, each
with `is_processing`; on by default, off with `--no-slots`), which gives its slot count and how
many are busy. Any other OpenAI server (vLLM, SGLang) is healthy when `GET /health` or, where
that is missing, `GET /v1/models` answers 200; its load is what the routers count themselves.

`UpstreamSlots` is the worker's SlotQueue fed from those readings, so worker.heartbeat publishes
the server's record with our worker's own schema, heartbeat and drain rules: the record reads
draining while the server does not answer its health check, and the drain on shutdown waits
until the server has no busy slot.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Final, Literal

import orjson
from aiohttp import ClientError, ClientSession, ClientTimeout

from worker.slots import SlotQueue

logger = logging.getLogger(__name__)

UpstreamKind = Literal["llama-server", "openai"]
UPSTREAM_KINDS: Final[tuple[UpstreamKind, ...]] = ("llama-server", "openai")


@dataclass(frozen=True, slots=True)
class Reading:
    """One look at the server: `slots` is None where it does not say."""

    healthy: bool
    running: int = 0
    slots: int | None = None


DOWN: Final = Reading(healthy=False)


class UpstreamProbe:
    def __init__(
        self, session: ClientSession, base_url: str, kind: UpstreamKind, timeout_s: float
    ) -> None:
        self._session = session
        self._base = base_url.rstrip("/")
        self._kind = kind
        self._timeout = ClientTimeout(total=timeout_s)
        self._health_paths = ["/health", "/v1/models"] if kind == "openai" else ["/health"]

    async def read(self) -> Reading:
        """The server's health and, for llama-server, its slots; DOWN if it does not answer."""
        try:
            if not await self._healthy():
                return DOWN
            if self._kind == "openai":
                return Reading(healthy=True)
            return await self._slots()
        except (ClientError, TimeoutError, OSError) as exc:
            logger.debug("upstream %s did not answer: %r", self._base, exc)
            return DOWN

    async def _healthy(self) -> bool:
        for path in list(self._health_paths):
            status, _ = await self._get(path)
            if status == 404 and len(self._health_paths) > 1:
                self._health_paths.remove(path)  # no such route here: ask the next one
                continue
            return status == 200
        return False

    async def _slots(self) -> Reading:
        status, body = await self._get("/slots")
        if status != 200:  # --no-slots, or an older build: healthy, load unknown
            return Reading(healthy=True)
        try:
            slots: Any = orjson.loads(body)
        except orjson.JSONDecodeError:
            slots = None
        if not isinstance(slots, list) or not slots:
            return Reading(healthy=True)
        busy = sum(1 for s in slots if isinstance(s, dict) and s.get("is_processing") is True)
        return Reading(healthy=True, running=busy, slots=len(slots))

    async def _get(self, path: str) -> tuple[int, bytes]:
        async with self._session.get(self._base + path, timeout=self._timeout) as response:
            return response.status, await response.read()


class UpstreamSlots(SlotQueue):
    """A SlotQueue whose load is the server's, as last read (see above); it admits nothing
    itself: the server does."""

    def __init__(self, slots: int) -> None:
        super().__init__(slots, 0)
        self._busy = 0
        self._healthy = True

    @property
    def running(self) -> int:
        return self._busy

    @property
    def draining(self) -> bool:
        return super().draining or not self._healthy

    @property
    def healthy(self) -> bool:
        return self._healthy

    def report(self, reading: Reading) -> None:
        """A new reading: wake the heartbeat if anything it publishes changed."""
        busy = min(reading.running, self.slots)
        if busy == self._busy and reading.healthy == self._healthy:
            return
        if reading.healthy != self._healthy:
            logger.warning("upstream %s", "healthy again" if reading.healthy else "unhealthy")
        self._busy, self._healthy = busy, reading.healthy
        self._changed()

    def _changed(self) -> None:
        # Idle by the server's slots; a dead server runs nothing worth waiting for.
        if self._busy == 0 or not self._healthy:
            self._idle.set()
        else:
            self._idle.clear()
        self.load_changed.set()


async def watch(probe: UpstreamProbe, slots: UpstreamSlots, interval_s: float) -> None:
    """Read the server every `interval_s` into `slots`, until cancelled."""
    while True:
        slots.report(await probe.read())
        await asyncio.sleep(interval_s)
