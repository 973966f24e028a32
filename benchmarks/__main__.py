"""`python -m benchmarks [SCENARIO] [ARGS...]`: run a scenario (default: router_overhead)."""

from __future__ import annotations

import sys

from benchmarks import router_overhead

SCENARIOS = {"router_overhead": router_overhead.main}


def main(argv: list[str]) -> int:
    if argv and argv[0] in ("-h", "--help"):
        sys.stdout.write(
            "usage: python -m benchmarks [SCENARIO] [ARGS...]\n"
            f"scenarios: {', '.join(SCENARIOS)} (default router_overhead); "
            "each takes --help\n"
        )
        return 0
    if argv and not argv[0].startswith("-"):
        name, rest = argv[0], argv[1:]
    else:
        name, rest = "router_overhead", argv
    scenario = SCENARIOS.get(name)
    if scenario is None:
        sys.stderr.write(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}\n")
        return 2
    return scenario(rest)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
