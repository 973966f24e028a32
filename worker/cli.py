"""`python -m worker`: parse the configuration, configure logging, serve until SIGTERM/SIGINT.

The server is driven by hand rather than by `web.run_app` so that the drain happens while the
listening socket is still open: during the drain, requests that race the routers' view of the
DRAIN event get a clean 503 (which a router retries elsewhere) instead of a refused connection,
and /health and /metrics stay reachable.

Exit status: 0 after SIGTERM/SIGINT, 2 for a bad option, EXIT_ENGINE_FAILED (3) when the engine
failed for good (worker.liveness), so that a supervisor restarts the worker.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence

from aiohttp import web

from contract.logs import configure
from contract.tracing import setup
from worker import appkeys
from worker.app import create_app
from worker.auth import load_secret
from worker.config import ConfigError, WorkerConfig, parse_config
from worker.liveness import EXIT_ENGINE_FAILED, drain
from worker.tracing import REQUEST_LOGGER

logger = logging.getLogger(__name__)

# After the drain, requests still running are cancelled after this long.
SHUTDOWN_GRACE_S = 1.0


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_config(argv, os.environ)  # exits 2 on a bad value
    try:
        secret = load_secret(config.worker_secret_file, os.environ)
        flush = None if config.otlp_endpoint is None else setup(config.otlp_endpoint, "worker")
    except ConfigError as exc:
        print(f"python -m worker: error: {exc}", file=sys.stderr)
        return 2
    configure(config.log_level, config.log_format, REQUEST_LOGGER)
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        failed = runner.run(serve(config, secret))
    if flush is not None:
        flush()  # the spans still batched
    return EXIT_ENGINE_FAILED if failed else 0


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


async def serve(config: WorkerConfig, secret: str | None = None) -> bool:
    """Serve until a signal (False) or until the engine failed for good (True)."""
    app = create_app(config, register_on_startup=False, secret=secret)
    runner = web.AppRunner(
        app,
        handle_signals=False,
        handler_cancellation=True,  # a client that disconnects cancels its generation
        shutdown_timeout=SHUTDOWN_GRACE_S,
        access_log=None,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    failed = app[appkeys.ENGINE_FAILED]
    try:
        await runner.setup()  # loads the model
        site = web.TCPSite(runner, config.host, config.port, backlog=config.backlog)
        await site.start()
        # Registered only now: a router that hears of this worker finds its port listening.
        if app[appkeys.ENGINE].failure.reason is None:
            await app[appkeys.HEARTBEAT].start()
        logger.info(
            "worker %s serving %s on http://%s:%d (engine %s)",
            config.worker_id,
            config.model_id,
            config.host,
            config.port,
            config.engine,
        )
        await _first_set(stop, failed)
        logger.info("shutting down")
        # 1-2. Drain with the listener open: refuse new work, let admitted work finish.
        await drain(app)
    finally:
        # 3. Close the listener and cancel what is left after SHUTDOWN_GRACE_S; then the
        #    cleanup contexts, in reverse: stop heartbeat + deregister, close Redis, close engine.
        await runner.cleanup()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    return failed.is_set()


async def _first_set(*events: asyncio.Event) -> None:
    waits = [asyncio.create_task(event.wait()) for event in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
