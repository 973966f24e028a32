"""Scenario command lines generated from their parameter dataclasses.

Each field whose metadata is `option(...)` becomes a flag: `--field-name` (or `--no-field-name`
for a bool that defaults to True, or the option's own `flag`), its value parser from the field's
type (int, float, str, Path, `X | None`, comma-separated `tuple[int, ...]` / `tuple[str, ...]`),
its default from the field and its help from the option, so a flag and its default are written
once. Validation stays in the dataclass's `__post_init__`.

Standard library only: benchmarks.batched's engine part imports it on machines without aiohttp.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

RESULTS_DIR = Path(__file__).resolve().parent / "results"
P = TypeVar("P")


def int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers, e.g. 1,2,4; got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {text!r}")
    return values


def str_list(text: str) -> tuple[str, ...]:
    values = tuple(x.strip() for x in text.split(",") if x.strip())
    if not values:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return values


@dataclasses.dataclass(frozen=True, slots=True)
class Option:
    """How a parameter appears on the command line."""

    help: str | None = None
    flag: str | None = None  # default: --field-name (--no-field-name for a bool default True)
    parse: Callable[[str], Any] | None = None  # default: from the field's type
    choices: tuple[str, ...] | None = None
    hidden: bool = False


def option(
    help: str | None = None,
    *,
    flag: str | None = None,
    parse: Callable[[str], Any] | None = None,
    choices: tuple[str, ...] | None = None,
    hidden: bool = False,
) -> dict[str, Option]:
    """Field metadata that puts a parameter on its scenario's command line."""
    return {"cli": Option(help, flag, parse, choices, hidden)}


_PARSERS: dict[Any, Callable[[str], Any]] = {
    int: int,
    float: float,
    str: str,
    Path: Path,
    tuple[int, ...]: int_list,
    tuple[str, ...]: str_list,
}
# Shared flags a scenario may take besides its parameters: name -> (flag, argparse keywords).
EXTRAS: dict[str, tuple[str, dict[str, Any]]] = {
    "out": ("--out", {"type": Path, "default": RESULTS_DIR}),
    "smoke": ("--smoke", {"action": "store_true", "help": "mark the results as a smoke run"}),
    "plots": ("--no-plots", {"action": "store_true"}),
    "progress": ("--no-progress", {"action": "store_true"}),
}


def _cli_fields(cls: type) -> list[tuple[dataclasses.Field[Any], Option]]:
    return [(f, f.metadata["cli"]) for f in dataclasses.fields(cls) if "cli" in f.metadata]


def _parser_for(annotation: Any) -> Callable[[str], Any]:
    if isinstance(annotation, types.UnionType):  # X | None
        (annotation,) = [a for a in typing.get_args(annotation) if a is not type(None)]
    return _PARSERS[annotation]


def add_params(parser: argparse.ArgumentParser, cls: type) -> None:
    """One flag per `option(...)` field of the dataclass `cls`."""
    hints = typing.get_type_hints(cls)
    for f, opt in _cli_fields(cls):
        name = f.name.replace("_", "-")
        kwargs: dict[str, Any] = {
            "dest": f.name,
            "help": argparse.SUPPRESS if opt.hidden else opt.help,
        }
        if hints[f.name] is bool:
            negative = f.default is True
            flag = opt.flag or (f"--no-{name}" if negative else f"--{name}")
            kwargs["action"] = "store_false" if negative else "store_true"
        else:
            flag = opt.flag or f"--{name}"
            kwargs["type"] = opt.parse or _parser_for(hints[f.name])
            kwargs["choices"] = opt.choices
            if f.default is dataclasses.MISSING:
                kwargs.update(required=True, default=argparse.SUPPRESS)
            else:
                kwargs["default"] = f.default
        parser.add_argument(flag, **kwargs)


def scenario_parser(
    cls: type, prog: str, description: str, extras: Iterable[str] = ("out", "smoke")
) -> argparse.ArgumentParser:
    """The command line of a scenario whose parameters are the dataclass `cls`."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_params(parser, cls)
    for extra in extras:
        flag, kwargs = EXTRAS[extra]
        parser.add_argument(flag, **kwargs)
    return parser


def params_from(cls: type[P], args: argparse.Namespace) -> P:
    """The parameters the parsed flags give (other fields keep their defaults); raises the
    dataclass's ValueError for values it rejects."""
    return cls(**{f.name: getattr(args, f.name) for f, _ in _cli_fields(cls)})


def parse_params(
    parser: argparse.ArgumentParser, cls: type[P], argv: Sequence[str]
) -> tuple[P, argparse.Namespace] | None:
    """Parse `argv`; None, after printing why, when the parameters are rejected."""
    args = parser.parse_args(argv)
    try:
        return params_from(cls, args), args
    except ValueError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return None


@dataclasses.dataclass(frozen=True, slots=True)
class Cli(Generic[P]):
    """A scenario's command line: its parameter dataclass, name and shared extra flags."""

    params: type[P]
    prog: str
    description: str
    extras: tuple[str, ...] = ("out", "smoke")

    def parser(self) -> argparse.ArgumentParser:
        return scenario_parser(self.params, self.prog, self.description, self.extras)

    def parse(self, argv: Sequence[str] | None) -> tuple[P, argparse.Namespace, list[str]]:
        """Parameters, flags and the argv they came from (sys.argv's by default), logging set
        up; exits 2 after saying why if the parameters are rejected."""
        argv = list(sys.argv[1:] if argv is None else argv)
        parsed = parse_params(self.parser(), self.params, argv)
        if parsed is None:
            raise SystemExit(2)
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        return *parsed, argv
