"""`--processes N`: N router processes on one port, one event loop each, sharing nothing but
Redis; the parent only supervises them.

Each child binds the public port with SO_REUSEPORT, so the kernel spreads new connections over
the N listening sockets, and builds its own app with `create_app` (own registry view, own
upstream pool, own metrics). The parent forks them before it has an event loop or a thread (a
fork copies only the calling thread), then waits for SIGCHLD, SIGTERM or SIGINT:

- SIGTERM or SIGINT: forwarded to every child as SIGTERM; each drains as a single router does
  (router.cli). A child still alive `shutdown_timeout_s + KILL_MARGIN_S` later is killed.
- A child that exits unasked: the others are stopped the same way and the parent exits non-zero
  (the child's status, else 1). It is not restarted: a crash that repeats would loop unseen,
  while the supervisor above (systemd, Kubernetes) restarts the whole router and shows it.

Children run in their own process group, so a terminal's Ctrl-C reaches only the parent (which
forwards it once), and on Linux they get SIGTERM when the parent dies, even by SIGKILL.

What differs per process (`child_config`): process i serves metrics on `metrics_port + i`, each
counting only its own requests, so Prometheus scrapes N targets (without --metrics-port,
/metrics on the public port answers for whichever process took the connection); only process 0
serves the admin API (one listener is enough: any process may write tenancy).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import logging
import os
import signal
import sys
import time
from collections.abc import Callable

from router.config import RouterConfig

logger = logging.getLogger(__name__)

KILL_MARGIN_S = 5.0  # past the children's own drain bound
SIGNALS = frozenset({signal.SIGCHLD, signal.SIGTERM, signal.SIGINT})
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def child_config(config: RouterConfig, index: int) -> RouterConfig:
    """Process `index`'s configuration: a single process with its own metrics port, and the
    admin API in process 0 only."""
    metrics_port = None if config.metrics_port is None else config.metrics_port + index
    admin_port = config.admin_port if index == 0 else None
    return dataclasses.replace(
        config, processes=1, metrics_port=metrics_port, admin_port=admin_port
    )


def supervise(config: RouterConfig, serve: Callable[[RouterConfig], int]) -> int:
    """Run `serve(child_config(config, i))` in `config.processes` forked children until a signal
    or a child's unexpected exit; the exit status for the whole router."""
    if config.metrics_port is None:
        logger.warning(
            "%d processes without --metrics-port: /metrics on the public port reports one "
            "process per scrape; set --metrics-port to scrape each",
            config.processes,
        )
    # Blocked before the first fork, so none is lost before the wait; children unblock them.
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    children: dict[int, int] = {}  # pid -> index
    try:
        for index in range(config.processes):
            pid = os.fork()
            if pid == 0:
                _run_child(serve, child_config(config, index))
            children[pid] = index
        logger.info("router processes started: pids %s", sorted(children))
        return _wait(children, config.shutdown_timeout_s + KILL_MARGIN_S)
    except BaseException:
        _stop(children, signal.SIGKILL)
        for pid in children:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        raise
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)


def _run_child(serve: Callable[[RouterConfig], int], config: RouterConfig) -> None:
    """The child's whole life; it never returns into the parent's stack."""
    code = 1
    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
        os.setpgid(0, 0)
        _die_with_parent()
        code = serve(config)
    except BaseException:
        logger.exception("router process %d failed", os.getpid())
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _die_with_parent() -> None:
    """SIGTERM this process when its parent dies (Linux); elsewhere, nothing."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() == 1:  # the parent died before the prctl
        os.kill(os.getpid(), signal.SIGTERM)


def _wait(children: dict[int, int], grace_s: float) -> int:
    """Reap children until none is left; stop all on a signal or on the first unasked exit."""
    status = 0
    deadline: float | None = None  # set once the children were told to stop
    while children:
        timeout_s = 1.0 if deadline is None else max(0.0, deadline - time.monotonic())
        info = signal.sigtimedwait(SIGNALS, timeout_s)
        if info is not None and info.si_signo != signal.SIGCHLD and deadline is None:
            logger.info("signal %d: stopping %d router processes", info.si_signo, len(children))
            deadline = time.monotonic() + grace_s
            _stop(children, signal.SIGTERM)
        for pid, code in _reap(children):
            index = children.pop(pid)
            if deadline is None:
                logger.error(
                    "router process %d (pid %d) exited with %d; stopping the others",
                    index,
                    pid,
                    code,
                )
                deadline = time.monotonic() + grace_s
                _stop(children, signal.SIGTERM)
                status = status or (code if code > 0 else 1)
            elif code != 0:
                status = status or (code if code > 0 else 1)
        if children and deadline is not None and time.monotonic() >= deadline:
            logger.error("router processes %s outlived the drain: killed", sorted(children))
            _stop(children, signal.SIGKILL)
            status = status or 1
            deadline = time.monotonic() + KILL_MARGIN_S
    return status


def _reap(children: dict[int, int]) -> list[tuple[int, int]]:
    """(pid, exit code) of each child that has ended; a signal's code is negative."""
    ended = []
    for pid in list(children):
        done, wait_status = os.waitpid(pid, os.WNOHANG)
        if done:
            ended.append((pid, os.waitstatus_to_exitcode(wait_status)))
    return ended


def _stop(children: dict[int, int], sig: signal.Signals) -> None:
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
