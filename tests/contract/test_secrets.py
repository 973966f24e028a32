"""The shared secret's sources: a file or the environment, never quoted back."""

from __future__ import annotations

from pathlib import Path

import pytest

from contract.options import ConfigError
from contract.secrets import SECRET_ENV, load_secret, secret_file

SECRET = "s3cret-for-the-routers-only"


def test_the_secret_comes_from_its_file_else_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text(SECRET + "\n")
    assert load_secret(str(path), {SECRET_ENV: "other"}) == SECRET  # the file wins
    assert load_secret(None, {SECRET_ENV: f" {SECRET} "}) == SECRET
    assert load_secret(None, {}) is None
    assert load_secret(None, {SECRET_ENV: ""}) is None


@pytest.mark.parametrize(
    ("content", "message"),
    [("\n", "is empty"), ("two words", "printable ASCII"), ("caf\u00e9", "printable ASCII")],
)
def test_a_secret_unfit_for_a_header_is_refused(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "secret"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_secret(str(path), {})


def test_the_file_option_never_quotes_what_it_was_given() -> None:
    with pytest.raises(ConfigError) as caught:
        secret_file(SECRET)  # someone passed the secret itself
    assert SECRET not in str(caught.value)


def test_an_unreadable_file_is_a_clean_error(tmp_path: Path) -> None:
    # A directory: unreadable as a file even by root.
    with pytest.raises(ConfigError, match="cannot read the worker secret file"):
        load_secret(str(tmp_path), {})
