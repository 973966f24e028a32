"""README.md's layout map stays true: every module has its line, and every line names a module."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("contract", "router", "worker", "benchmarks", "deploy")
ENTRY = re.compile(r"^- `([a-z_][a-z0-9_.]*)`(?:, `[a-z_][a-z0-9_.]*`)*: \S", re.MULTILINE)


def layout_section() -> str:
    text = (REPO / "README.md").read_text()
    start = text.index("\n## Layout\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else len(text)]


def listed() -> list[str]:
    names: list[str] = []
    for line in layout_section().splitlines():
        if ENTRY.match(line):
            head = line.split(": ", 1)[0]
            names += re.findall(r"`([^`]+)`", head)
    return names


def modules() -> set[str]:
    found: set[str] = set()
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            if parts[-1] in ("__init__", "__main__"):
                parts = parts[:-1]
            found.add(".".join(parts))
    return found


def test_every_module_has_a_line_in_the_layout_map() -> None:
    missing = sorted(modules() - set(listed()))
    assert not missing, f"README.md's Layout section lacks: {', '.join(missing)}"


def test_every_line_of_the_layout_map_names_a_module_that_exists() -> None:
    names = listed()
    assert len(names) == len(set(names)), "a module is listed twice"
    stale = sorted(set(names) - modules())
    assert not stale, f"README.md's Layout section names modules that do not exist: {stale}"
