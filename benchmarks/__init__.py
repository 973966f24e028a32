"""Benchmarks: the harness (`python -m benchmarks`), the stack helpers, and the scenarios.

Harness: `serve` (the CLI), `runner` (closed and open loop, levels, progress), `client` (one
timed request), `arrivals` (Poisson / gamma inter-arrivals), `workload` (synthetic prompts,
JSONL conversations), `metrics` (per-request records, summaries with vLLM's key names),
`report` (JSON, JSONL, CSV, plots), `meta` (command, revision, machine, date).

Stack and scenarios: `stack` (redis-server + workers + routers on free local ports, torn down by
PID), `scenario` (what the scenarios share), `router_overhead`, `balancing`, `real_model`,
`scale_out`; `loadgen` is the lean closed-loop generator router_overhead runs as its client.
See benchmarks/README.md. Results the README quotes live in `benchmarks/results/`.
"""
