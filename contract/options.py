"""Flags and environment variables derived from a frozen config dataclass.

Each field of the dataclass is one option: the flag `--field-name`, the environment variable
`<PREFIX>FIELD_NAME` (then any aliases in its metadata), a value parser chosen by the field's type
(int, float, str, bool as on/off, StrEnum or Literal choices, `X | None`), the help text from
its metadata (`meta`) and the default from the field itself, so a default is written once. A flag
beats the environment, which beats the default; an empty environment variable counts as unset.

    @dataclass(frozen=True, slots=True)
    class Config:
        redis_url: str = field(metadata=meta("Redis URL", env=("REDIS_URL",)))
        port: int = field(default=8080, metadata=meta("port to listen on"))

    OPTIONS = Options(Config, env_prefix="APP_", prog="python -m app", description="...")
    config = OPTIONS.parse(sys.argv[1:], os.environ)  # bad values exit 2 with one line

Validation stays in the dataclass's `__post_init__`: a ValueError whose message starts with a
field name is reported with that name replaced by what the user wrote (`--port`, `APP_PORT`), or,
for a value nobody wrote, by both spellings (`--port (APP_PORT)`).
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import math
import re
import types
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, Union, get_args, get_origin
from typing import get_type_hints as _type_hints
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

E = TypeVar("E", bound=enum.Enum)
C = TypeVar("C", bound="DataclassInstance")
Parse = Callable[[str], Any]

_HELP, _ENV, _PARSE, _METAVAR = "help", "env", "parse", "metavar"
_FIELD_NAME = re.compile(r"(\w+)(.*)", re.DOTALL)


class ConfigError(ValueError):
    """A configuration value is missing or invalid; the message is meant for the user."""


class LogLevel(enum.StrEnum):
    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"
    CRITICAL = "CRITICAL"


def meta(
    text: str,
    *,
    env: Sequence[str] = (),
    parse: Parse | None = None,
    metavar: str | None = None,
) -> dict[str, Any]:
    """Field metadata: help text, extra environment variables, a parser overriding the type's."""
    return {_HELP: text, _ENV: tuple(env), _PARSE: parse, _METAVAR: metavar}


def member(name: str, value: object, kind: type[E]) -> E:
    """`value` as a member of `kind`, or a ValueError naming the field and the choices."""
    try:
        return kind(value)
    except ValueError:
        raise ValueError(_not_one_of(name, [m.value for m in kind], value)) from None


REDIS_SCHEMES = frozenset({"redis", "rediss", "unix"})


def require(ok: bool, message: str) -> None:
    """ValueError(`message`) unless `ok`; the message starts with the field's name, which the
    CLI replaces by the flag or variable written."""
    if not ok:
        raise ValueError(message)


def is_redis_url(url: str) -> bool:
    """A redis://, rediss:// or unix:// URL that parses (port in range). Callers must not quote
    it in their error: urllib's own errors do, password and all."""
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises on a port out of range
    except ValueError:
        return False
    return parts.scheme in REDIS_SCHEMES


def check_one_of(name: str, value: object, choices: Collection[object]) -> None:
    if value not in choices:
        raise ValueError(_not_one_of(name, choices, value))


def _not_one_of(name: str, choices: Collection[object], value: object) -> str:
    return f"{name} must be one of {', '.join(map(str, choices))}, got {value!r}"


def on_off(text: str) -> bool:
    value = text.strip().lower()
    if value not in ("on", "off"):
        raise ValueError(text)
    return value == "on"


def finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


def _integer(text: str) -> int:
    return int(text)


def _text(text: str) -> str:
    return text


_SIMPLE: Mapping[Any, tuple[Parse, str]] = {
    bool: (on_off, "{on,off}"),
    int: (_integer, "INT"),
    float: (finite, "FLOAT"),
    str: (_text, "TEXT"),
}


def _choices(name: str, values: Sequence[Any]) -> tuple[Parse, str]:
    by_text = {str(v).lower(): v for v in values}

    def parse(text: str) -> Any:
        try:
            return by_text[text.strip().lower()]
        except KeyError:
            raise ValueError(_not_one_of(name, values, text)) from None

    return parse, "{" + ",".join(map(str, values)) + "}"


def _type_parser(name: str, hint: Any) -> tuple[Parse, str]:
    """The parser and metavar for a field of type `hint`."""
    if hint in _SIMPLE:
        return _SIMPLE[hint]
    if get_origin(hint) is Literal:
        return _choices(name, get_args(hint))
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return _choices(name, list(hint))
    if get_origin(hint) in (Union, types.UnionType):
        inner = [a for a in get_args(hint) if a is not type(None)]
        if len(inner) == 1:
            parse, metavar = _type_parser(name, inner[0])
            if inner[0] is str:
                return parse, metavar
            # `auto` leaves the choice to whatever consumes the config.
            return (lambda text: None if text.strip().lower() == "auto" else parse(text)), (
                f"{metavar}|auto"
            )
    raise TypeError(f"{name}: no parser for {hint!r}; give one with meta(parse=...)")


def _shown(default: Any, hint: Any) -> str:
    """A default as a user would write it."""
    if default is None:
        return "unset" if str in get_args(hint) else "auto"
    if isinstance(default, bool):
        return "on" if default else "off"
    if isinstance(default, enum.Enum):
        return str(default.value)
    return str(default) if default != "" else "unset"


@dataclass(frozen=True, slots=True)
class _Spec:
    """One field as an option."""

    name: str
    flag: str
    envs: tuple[str, ...]
    parse: Parse
    metavar: str
    help: str
    required: bool

    @property
    def both(self) -> str:
        """Both spellings, for a value the user did not write."""
        return f"{self.flag} ({' or '.join(self.envs)})"


def _spec(item: dataclasses.Field[Any], hint: Any, env_prefix: str) -> _Spec:
    md = item.metadata
    try:
        parse, metavar = _type_parser(item.name, hint)
    except TypeError:
        if md.get(_PARSE) is None:
            raise
        parse, metavar = md[_PARSE], "VALUE"
    default, factory = item.default, item.default_factory
    if default is dataclasses.MISSING and factory is not dataclasses.MISSING:
        default = factory()
    required = default is dataclasses.MISSING
    envs = (env_prefix + item.name.upper(), *md.get(_ENV, ()))
    shown = "required" if required else f"default {_shown(default, hint)}"
    text = md.get(_HELP, "")
    return _Spec(
        name=item.name,
        flag="--" + item.name.replace("_", "-"),
        envs=envs,
        parse=md.get(_PARSE) or parse,
        metavar=md.get(_METAVAR) or metavar,
        help=f"{text} (env {' or '.join(envs)}; {shown})".replace("%", "%%"),
        required=required,
    )


@dataclass(frozen=True, slots=True)
class Options(Generic[C]):
    """The command line and environment of one config dataclass."""

    config: type[C]
    env_prefix: str
    prog: str
    description: str
    specs: tuple[_Spec, ...] = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        hints = _type_hints(self.config)
        specs = tuple(
            _spec(item, hints[item.name], self.env_prefix)
            for item in dataclasses.fields(self.config)
        )
        object.__setattr__(self, "specs", specs)

    def parser(self) -> argparse.ArgumentParser:
        parser = argparse.ArgumentParser(
            prog=self.prog,
            description=self.description,
            # No prefixes of flags: `--worker-secret` must not pass for `--worker-secret-file`.
            allow_abbrev=False,
            epilog="A flag overrides its environment variable, which overrides the default.",
        )
        for spec in self.specs:
            # Raw strings: flag and environment values share one parser and one error path.
            parser.add_argument(spec.flag, dest=spec.name, metavar=spec.metavar, help=spec.help)
        return parser

    def parse(self, argv: Sequence[str] | None, environ: Mapping[str, str]) -> C:
        """Flags over environment over defaults; a bad value exits 2 with one clear line."""
        parser = self.parser()
        try:
            return self._load(parser, argv, environ)
        except ConfigError as exc:
            parser.error(str(exc))

    def load(self, argv: Sequence[str] | None, environ: Mapping[str, str]) -> C:
        """As `parse`, but a bad value raises ConfigError (bad flag syntax still exits 2)."""
        return self._load(self.parser(), argv, environ)

    def _load(
        self, parser: argparse.ArgumentParser, argv: Sequence[str] | None, env: Mapping[str, str]
    ) -> C:
        known, unknown = parser.parse_known_args(argv)
        if unknown:
            # Named, never quoted: a stray value may be a secret typed on the command line.
            names = sorted({arg.partition("=")[0] for arg in unknown if arg.startswith("-")})
            raise ConfigError(f"unrecognized arguments: {' '.join(names) or '(values not shown)'}")
        flags = vars(known)
        values: dict[str, Any] = {}
        labels = {spec.name: spec.both for spec in self.specs}
        for spec in self.specs:
            raw, source = _raw(spec, flags, env)
            if raw is None:
                if spec.required:
                    raise ConfigError(f"{spec.both} is required")
                continue
            labels[spec.name] = source
            try:
                values[spec.name] = spec.parse(raw)
            except ValueError as exc:
                raise ConfigError(_parse_error(spec, source, raw, exc)) from None
        try:
            return self.config(**values)
        except ValueError as exc:
            raise ConfigError(_relabel(str(exc), labels)) from None


def _raw(spec: _Spec, flags: Mapping[str, Any], env: Mapping[str, str]) -> tuple[str | None, str]:
    """The text the user gave for `spec`, and where: the flag, else the first non-empty variable."""
    value: str | None = flags.get(spec.name)
    if value is not None:
        return value, spec.flag
    for name in spec.envs:
        if env.get(name):
            return env[name], name
    return None, ""


def _parse_error(spec: _Spec, source: str, raw: str, exc: ValueError) -> str:
    message = _relabel(str(exc), {spec.name: source})
    if message != str(exc):  # the parser named the field: its message says what is wrong
        return message
    if isinstance(exc, ConfigError):
        return f"{source}: {exc}"
    return f"{source}: invalid value {raw!r}"


def _relabel(message: str, labels: Mapping[str, str]) -> str:
    """`message` with the field name it starts with replaced by the option's label."""
    found = _FIELD_NAME.match(message)
    if found is None or found[1] not in labels:
        return message
    return labels[found[1]] + found[2]
