"""Scenario: what the router costs, side by side with other proxies and alone.

    python -m benchmarks.router_overhead [--rounds 5] [--duration-s 10] [--out DIR]

The default run (benchmarks.router_overhead.compare) puts direct, nginx, vllm-router, a minimal
aiohttp relay (a floor, not a product) and this router (auth off, auth on) in front of one mock
upstream on pinned cores, in interleaved rounds; writes router_overhead.{json,md}.

The router alone, in two parts (below), writes router_overhead_alone.{json,md}:

    python -m benchmarks.router_overhead.cli [--rounds N] [--requests-per-round N] [--out DIR]

Stack: redis-server, fake-engine workers (no time to first token, no delay between tokens, small
max_tokens) and one router, all on 127.0.0.1 (benchmarks/stack.py).

Part 1, added latency. One worker. The same closed-loop load goes direct (client -> worker) and
via the router (client -> router -> that same worker) in interleaved rounds, ABBA order (direct,
router, router, direct, ...), so drift on a shared machine hits both arms alike. For each of
{plain, streaming} x concurrency {1, 32}: pooled p50/p99 of E2E (and of time to first content
chunk when streaming) per arm, and added = router - direct per percentile. Also the median over
rounds of the per-round difference, which is less sensitive to slow drift.

Part 2, max requests/s of one router process. More workers are added so they are not the limit;
the router is pinned to one CPU and everything else (workers, redis, the load generator, this
process) to the others; a separate load-generator process (wrk with a POST Lua script when
installed, else `python -m benchmarks.loadgen`) drives plain requests at rising concurrency for a
fixed time. Reported per level: requests/s, latency, CPU used by the router and by the workers
(a router near 100 % of its core is the bottleneck). Plateau = the best level. For reference, the
same load direct to one worker pinned to the router's CPU.

Writes router_overhead.json (command, revision, machine, parameters, all figures) and
router_overhead.md (a table for the README) to --out.
"""

from benchmarks.router_overhead.compare import main
from benchmarks.router_overhead.latency import measure_latency
from benchmarks.router_overhead.params import Params
from benchmarks.router_overhead.rps import measure_rps

__all__ = ["Params", "main", "measure_latency", "measure_rps"]
