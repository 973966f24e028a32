"""A worker whose engine died takes itself down, so that its supervisor starts a fresh one.

An engine that can no longer generate sets its `failure` (worker.engine): the batched engine's
step loop died, or a generation left the llama context in an unknown state. Serving on would
answer 503 to everything while heartbeats still said READY and routers kept choosing it. So
the watcher started here, in order:
  1. makes /health answer 503 with the reason (worker.handlers reads the failure) and refuses
     new requests (503, which a router retries on another worker);
  2. stops the heartbeat and removes the record (EventType.LEAVE): routers stop choosing this
     worker at once, not one TTL later;
  3. lets in-flight requests end, up to FAILED_GRACE_S; the engine has failed their streams
     already (503 before the first byte, an SSE error event after it);
  4. sets ENGINE_FAILED, on which worker.cli shuts down and exits with EXIT_ENGINE_FAILED.
The shutdown that follows skips the drain (`drain` below): a drain publishes the record again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from worker import appkeys

logger = logging.getLogger(__name__)

EXIT_ENGINE_FAILED = 3  # the worker's exit status after its engine failed
FAILED_GRACE_S = 5.0


async def watch_engine_ctx(app: web.Application) -> AsyncIterator[None]:
    """Watch the engine from startup (after the registry context) to shutdown."""
    task = asyncio.create_task(_watch(app), name="worker-engine-watch")
    yield
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def _watch(app: web.Application) -> None:
    reason = await app[appkeys.ENGINE].failure.wait()
    logger.error("the engine failed (%s); leaving the registry, then exiting", reason)
    slots = app[appkeys.SLOTS]
    slots.start_draining()  # 1.
    await app[appkeys.HEARTBEAT].stop()  # 2.
    if not await slots.wait_idle(FAILED_GRACE_S):  # 3.
        logger.warning(
            "%d requests still running after %ss; cancelling them", slots.running, FAILED_GRACE_S
        )
    app[appkeys.ENGINE_FAILED].set()  # 4.


async def drain(app: web.Application) -> None:
    """Shutdown steps 1-2 (worker.heartbeat), unless the engine failed: its watcher has left
    the registry already, and a drain would publish the record again."""
    if app[appkeys.ENGINE].failure.reason is None:
        await app[appkeys.HEARTBEAT].drain()
