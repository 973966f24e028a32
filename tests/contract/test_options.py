"""contract.options on a dataclass of its own: types, precedence, errors and help."""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import Literal

import pytest

from contract.options import (
    ConfigError,
    LogLevel,
    Options,
    check_one_of,
    is_redis_url,
    member,
    meta,
)


class Colour(enum.StrEnum):
    RED = "red"
    DARK_BLUE = "dark-blue"


def _name(text: str) -> str:
    if not text.strip():
        raise ConfigError("no name given")
    return text.strip().title()


@dataclass(frozen=True, slots=True)
class Sample:
    url: str = field(metadata=meta("where to go", env=("SAMPLE_URL", "URL")))
    count: int = field(default=3, metadata=meta("how many"))
    ratio_s: float = field(default=0.5, metadata=meta("100% of nothing"))
    loud: bool = field(default=False, metadata=meta("shout"))
    threads: int | None = field(default=None, metadata=meta("threads"))
    label: str | None = field(default=None, metadata=meta("a label", metavar="LABEL"))
    colour: Colour = field(default=Colour.RED, metadata=meta("paint"))
    mode: Literal["fast", "slow"] = field(default="fast", metadata=meta("pace"))
    name: str = field(default="", metadata=meta("who", parse=_name))
    level: LogLevel = field(default=LogLevel.INFO, metadata=meta("log level"))

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError(f"count must be >= 1, got {self.count}")
        if self.ratio_s > self.count:
            raise ValueError("ratio_s: must not exceed count")
        object.__setattr__(self, "level", member("level", self.level, LogLevel))


OPTIONS = Options(Sample, env_prefix="T_", prog="sample", description="A sample.")
URL = ["--url", "u"]


def test_defaults_come_from_the_fields() -> None:
    assert OPTIONS.load(URL, {}) == Sample(url="u")


def test_each_type_parses_its_text() -> None:
    argv = [
        *URL,
        *("--count", " 7 ", "--ratio-s", "1.5", "--loud", "ON", "--threads", "4"),
        *("--label", " x ", "--colour", "Dark-Blue", "--mode", "SLOW", "--name", " ada "),
        *("--level", "debug"),
    ]
    config = OPTIONS.load(argv, {})
    assert (config.count, config.ratio_s, config.loud, config.threads) == (7, 1.5, True, 4)
    assert (config.label, config.colour, config.mode) == (" x ", Colour.DARK_BLUE, "slow")
    assert (config.name, config.level) == ("Ada", LogLevel.DEBUG)
    assert OPTIONS.load([*URL, "--threads", "Auto", "--loud", "off"], {}).threads is None
    assert OPTIONS.load([*URL, "--label", "auto"], {}).label == "auto"


def test_flags_beat_environment_beats_defaults() -> None:
    env = {"T_COUNT": "5", "T_LOUD": "on", "SAMPLE_URL": "env-url", "URL": "last"}
    config = OPTIONS.load(["--count", "6"], env)
    assert (config.count, config.loud, config.url) == (6, True, "env-url")
    assert OPTIONS.load([], {"URL": "last"}).url == "last"
    assert OPTIONS.load([], {**env, "T_URL": "first"}).url == "first"
    assert OPTIONS.load(["--url", "flag"], env).url == "flag"


def test_empty_environment_values_count_as_unset() -> None:
    config = OPTIONS.load([], {"T_URL": "", "URL": "u", "T_COUNT": "", "T_COLOUR": ""})
    assert (config.url, config.count, config.colour) == ("u", 3, Colour.RED)


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--count", "many"], {}, "--count: invalid value 'many'"),
        ([], {"T_COUNT": "x"}, "T_COUNT: invalid value 'x'"),
        (["--ratio-s", "nan"], {}, "--ratio-s: invalid value 'nan'"),
        (["--ratio-s=-inf"], {}, "--ratio-s: invalid value '-inf'"),
        (["--loud", "yes"], {}, "--loud: invalid value 'yes'"),
        (["--threads", "some"], {}, "--threads: invalid value 'some'"),
        (["--colour", "green"], {}, "--colour must be one of red, dark-blue, got 'green'"),
        ([], {"T_MODE": "medium"}, "T_MODE must be one of fast, slow, got 'medium'"),
        (["--name", " "], {}, "--name: no name given"),
        (["--count", "0"], {}, "--count must be >= 1, got 0"),
        ([], {"T_COUNT": "0"}, "T_COUNT must be >= 1, got 0"),
        (["--ratio-s", "4"], {}, "--ratio-s: must not exceed count"),
        (["--count", "1"], {"T_RATIO_S": "2"}, "T_RATIO_S: must not exceed count"),
        (["--level", "loud"], {}, "--level must be one of DEBUG, INFO"),
    ],
)
def test_a_bad_value_names_what_the_user_wrote(
    argv: list[str], env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as error:
        OPTIONS.load([*URL, *argv], env)
    assert message in str(error.value)


def test_a_missing_required_value_names_every_spelling() -> None:
    with pytest.raises(ConfigError, match=r"^--url \(T_URL or SAMPLE_URL or URL\) is required$"):
        OPTIONS.load(["--count", "2"], {"URL": ""})


def test_a_value_nobody_wrote_is_named_by_both_spellings() -> None:
    @dataclass(frozen=True)
    class Pair:
        low: int = field(default=5, metadata=meta("low"))
        high: int = field(default=9, metadata=meta("high"))

        def __post_init__(self) -> None:
            if self.high <= self.low:
                raise ValueError("high must exceed low")

    options = Options(Pair, env_prefix="P_", prog="pair", description="")
    with pytest.raises(ConfigError, match=r"^--high \(P_HIGH\) must exceed low$"):
        options.load(["--low", "10"], {})


def test_parse_exits_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        OPTIONS.parse([*URL, "--count", "0"], {})
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == "sample: error: --count must be >= 1, got 0"


def test_help_shows_every_option_with_its_variable_and_default() -> None:
    text = " ".join(OPTIONS.parser().format_help().split())
    for item in dataclasses.fields(Sample):
        assert "--" + item.name.replace("_", "-") in text
    for expected in (
        "--url TEXT where to go (env T_URL or SAMPLE_URL or URL; required)",
        "--count INT how many (env T_COUNT; default 3)",
        "--ratio-s FLOAT 100% of nothing (env T_RATIO_S; default 0.5)",
        "--loud {on,off} shout (env T_LOUD; default off)",
        "--threads INT|auto threads (env T_THREADS; default auto)",
        "--label LABEL a label (env T_LABEL; default unset)",
        "--colour {red,dark-blue} paint (env T_COLOUR; default red)",
        "--mode {fast,slow} pace (env T_MODE; default fast)",
        "--name TEXT who (env T_NAME; default unset)",
        "(env T_LEVEL; default INFO)",
    ):
        assert expected in text


def test_a_type_without_a_parser_needs_one_in_its_metadata() -> None:
    @dataclass(frozen=True)
    class Odd:
        items: list[int] = field(default_factory=list, metadata=meta("items"))

    with pytest.raises(TypeError, match="items: no parser"):
        Options(Odd, env_prefix="O_", prog="odd", description="")

    @dataclass(frozen=True)
    class Parsed:
        items: tuple[int, ...] = field(
            default_factory=tuple,
            metadata=meta("items", parse=lambda t: tuple(map(int, t.split(",")))),
        )

    options = Options(Parsed, env_prefix="O_", prog="odd", description="")
    assert options.load([], {"O_ITEMS": "1,2"}).items == (1, 2)
    assert "--items VALUE items (env O_ITEMS; default ())" in " ".join(
        options.parser().format_help().split()
    )


def test_choice_checks_name_the_field() -> None:
    assert member("colour", "red", Colour) is Colour.RED
    with pytest.raises(ValueError, match=r"^colour must be one of red, dark-blue, got 'x'$"):
        member("colour", "x", Colour)
    check_one_of("mode", "fast", ("fast", "slow"))
    with pytest.raises(ValueError, match=r"^mode must be one of fast, slow, got 'x'$"):
        check_one_of("mode", "x", ("fast", "slow"))


def test_a_redis_url_must_parse_and_name_a_redis_scheme() -> None:
    for good in ("redis://127.0.0.1:6379/0", "rediss://u:p@h:6380", "unix:///run/redis.sock"):
        assert is_redis_url(good), good
    for bad in ("http://h:6379", "redis://h:99999", "redis://u:s3cret\uff03pw@h:6379/0", ""):
        assert not is_redis_url(bad), bad
