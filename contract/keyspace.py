"""One deployment's Redis names: every key and pub/sub channel sits under its prefix.

Two deployments (staging and production, say) may share one Redis: each gives its own
`--redis-prefix`, and neither sees the other's workers, tenants or limits. Database numbers do not
do this: pub/sub channels ignore them. The prefix is also what Redis ACL key patterns match
(`~{prefix}worker:*`), so it must not contain the glob characters `*?[]` or spaces.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

PREFIX_RE: Final = re.compile(r"[A-Za-z0-9_.:{}-]{0,64}")


def check_prefix(prefix: str) -> str:
    """The prefix unchanged, or ValueError naming what is allowed."""
    if not PREFIX_RE.fullmatch(prefix):
        raise ValueError(
            "redis_prefix: expected at most 64 of A-Z a-z 0-9 _ . : { } -, e.g. `staging:`"
        )
    return prefix


@dataclass(frozen=True, slots=True)
class Keyspace:
    """Names under one prefix; the empty prefix names keys as they always were."""

    prefix: str = ""

    def __post_init__(self) -> None:
        check_prefix(self.prefix)

    def key(self, name: str) -> str:
        return self.prefix + name


DEFAULT_KEYSPACE: Final = Keyspace()
