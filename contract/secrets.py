"""The secret routers and workers share: read from a file or the environment, never a flag.

A command line is readable by every local user (`ps`), so the secret has no flag of its own:
`--worker-secret-file PATH` names a file holding it, else XERO_WORKER_SECRET holds it. Both sides
read it the same way, once at startup; the value is never quoted back in an error.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Final

from contract.options import ConfigError

SECRET_ENV: Final = "XERO_WORKER_SECRET"


def secret_file(text: str) -> str:
    """The `--worker-secret-file` value: an existing file's absolute path. The value is never
    quoted back: someone may have written the secret itself there."""
    path = os.path.abspath(os.path.expanduser(text))
    if not os.path.isfile(path):
        raise ConfigError("no such file (it takes the path of a file holding the secret)")
    return path


def load_secret(path: str | None, environ: Mapping[str, str]) -> str | None:
    """The secret: the file's content without surrounding whitespace, else $XERO_WORKER_SECRET,
    else None. Raises ConfigError for an unreadable file or a secret unfit for a header."""
    if path is not None:
        try:
            with open(path, encoding="utf-8") as f:
                secret = f.read().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read the worker secret file: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError("the worker secret file is not UTF-8 text") from None
        source = "the worker secret file"
    else:
        secret = environ.get(SECRET_ENV, "").strip()
        source = SECRET_ENV
    if not secret:
        if path is not None:
            raise ConfigError(f"{source} is empty")
        return None
    if not all("!" <= c <= "~" for c in secret):
        raise ConfigError(f"{source}: expected printable ASCII without spaces")
    return secret
