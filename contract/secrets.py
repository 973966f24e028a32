"""Secrets read from a file or the environment, never a flag.

A command line is readable by every local user (`ps`), so a secret has no flag of its own:
`--worker-secret-file PATH` names a file holding the secret routers and workers share, else
XERO_WORKER_SECRET holds it; the router's admin key is read the same way (`--admin-key-file`,
XERO_ADMIN_KEY). Each is read once at startup; the value is never quoted back in an error.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Final

from contract.options import ConfigError

SECRET_ENV: Final = "XERO_WORKER_SECRET"
WORKER_SECRET: Final = "the worker secret"
ADMIN_KEY_ENV: Final = "XERO_ADMIN_KEY"


def secret_file(text: str) -> str:
    """The `--worker-secret-file` value: an existing file's absolute path. The value is never
    quoted back: someone may have written the secret itself there."""
    path = os.path.abspath(os.path.expanduser(text))
    if not os.path.isfile(path):
        raise ConfigError("no such file (it takes the path of a file holding the secret)")
    return path


def load_secret(
    path: str | None,
    environ: Mapping[str, str],
    *,
    env: str = SECRET_ENV,
    what: str = WORKER_SECRET,
) -> str | None:
    """The secret: the file's content without surrounding whitespace, else $`env` (by default
    XERO_WORKER_SECRET), else None. Raises ConfigError, naming `what`, for an unreadable file or
    a secret unfit for a header."""
    if path is not None:
        try:
            with open(path, encoding="utf-8") as f:
                secret = f.read().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read {what} file: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{what} file is not UTF-8 text") from None
        source = f"{what} file"
    else:
        secret = environ.get(env, "").strip()
        source = env
    if not secret:
        if path is not None:
            raise ConfigError(f"{source} is empty")
        return None
    if not all("!" <= c <= "~" for c in secret):
        raise ConfigError(f"{source}: expected printable ASCII without spaces")
    return secret
