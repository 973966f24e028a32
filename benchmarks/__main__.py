"""`python -m benchmarks [SCENARIO] [ARGS...]`.

With no scenario name (the first argument starts with `-`), or `serve`: benchmark any
OpenAI-compatible endpoint (benchmarks.serve). Scenarios start their own stack and write their
results to benchmarks/results/: router_overhead, balancing, real_model, scale_out.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable

SCENARIOS = {
    "serve": "benchmarks.serve",
    "router_overhead": "benchmarks.router_overhead",
    "balancing": "benchmarks.balancing",
    "real_model": "benchmarks.real_model",
    "scale_out": "benchmarks.scale_out",
    "prefix_cache": "benchmarks.prefix_cache",
    "streams": "benchmarks.streams",
}


def main(argv: list[str]) -> int:
    if argv and argv[0] in ("-h", "--help") and len(argv) == 1:
        sys.stdout.write(
            "usage: python -m benchmarks [SCENARIO] [ARGS...]\n"
            "  no SCENARIO (or 'serve'): benchmark an OpenAI-compatible endpoint; "
            "see python -m benchmarks serve --help\n"
            f"  scenarios: {', '.join(s for s in SCENARIOS if s != 'serve')}; each takes --help\n"
        )
        return 0
    if argv and not argv[0].startswith("-"):
        name, rest = argv[0], argv[1:]
    else:
        name, rest = "serve", argv
    module = SCENARIOS.get(name)
    if module is None:
        sys.stderr.write(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}\n")
        return 2
    # Imported on demand: each scenario pulls in only what it needs.
    scenario: Callable[[list[str]], int] = importlib.import_module(module).main
    return scenario(rest)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
