"""Benchmarks: the harness (`python -m benchmarks`), the shared launcher, and the scenarios.

Load: `client` (one timed chat request: the one JSON/SSE reader), `loadgen` (the load generator:
closed and open loop on one session; also `python -m benchmarks.loadgen`), `runner` (workloads,
levels and progress for the harness), `serve` (the harness CLI), `arrivals` (Poisson / gamma
inter-arrivals), `workload` (synthetic prompts, JSONL conversations), `metrics` (per-request
records, summaries with vLLM's key names), `report` (JSON, JSONL, CSV, plots), `meta` (command,
revision, machine, date).

Processes: `processes` (the launcher tests, benchmarks and deploy/local share: command lines,
probes, processes stopped by PID), `stack` (redis-server + workers + routers as one async
context), `cpu` (CPU accounting and pinning).

Scenarios: `flags` (their CLIs, generated from their parameter dataclasses), `scenario` (what
they share), `router_overhead/`, `balancing`, `real_model`, `scale_out`, `batched/`,
`bare_loop`, `llama_server`. See benchmarks/README.md. Results the README quotes live in
`benchmarks/results/`.
"""
