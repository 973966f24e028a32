"""CPU accounting and pinning for the scenarios that measure how much CPU a router uses."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (all its threads), from procfs."""
    with open(f"/proc/{pid}/stat", "rb") as f:  # procfs: never blocks on I/O
        fields = f.read().rsplit(b")", 1)[1].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def host_busy_seconds() -> float:
    """CPU seconds all processes on the machine have run, plus hypervisor steal (/proc/stat).

    Interrupt and softirq time are left out: loopback traffic of the benchmark itself lands
    there, and no process is charged for it."""
    with open("/proc/stat", "rb") as f:  # procfs: never blocks on I/O
        user, nice, system, _idle, _iowait, _irq, _softirq, steal = (
            int(x) for x in f.readline().split()[1:9]
        )
    return (user + nice + system + steal) / os.sysconf("SC_CLK_TCK")


def cpu_percent(
    before: Mapping[str, float], after: Mapping[str, float], wall_s: float
) -> dict[str, float]:
    """Percent of one core over `wall_s` for each CPU-seconds counter, from two snapshots whose
    `machine` key is `host_busy_seconds()`; `other` is what processes outside the benchmark used
    (other people's jobs on a shared machine), the noise to watch."""
    pct = {k: (after[k] - before[k]) / wall_s * 100 for k in before}
    ours = sum(v for k, v in pct.items() if k != "machine")
    pct["other"] = max(0.0, pct["machine"] - ours)
    return pct


def set_affinity(pid: int, cpus: set[int]) -> None:
    """Pin every thread of a process to `cpus` (threads started later inherit it)."""
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except FileNotFoundError:
        return
    for tid in tids:
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(tid, cpus)
