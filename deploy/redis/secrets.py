"""The secrets a deployment needs, generated fresh: one Redis password per ACL role, the role
URLs built from them, and the worker secret (the router's `Authorization: Bearer` to workers).

    python3 -m deploy.redis.secrets k8s [--namespace xero] [--redis-url URL] [--managed]
        prints the Kubernetes Secrets: xero-redis (router-url, worker-url, admin-url),
        xero-redis-users (one password per role; not with --managed: a managed Redis keeps its
        own users) and xero-worker-secret; pipe it to `kubectl apply -f -`.
    python3 -m deploy.redis.secrets compose [--out deploy/docker/.env]
        writes the variables docker compose reads (REDIS_<ROLE>_PASSWORD, XERO_WORKER_SECRET),
        mode 0600, and refuses to overwrite an existing file.

Nothing here is ever committed: the repository holds rules and templates, never a password.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from deploy.redis.acl import ROLES

DEPLOY = Path(__file__).resolve().parent.parent
CLIENT_ROLES = ("router", "worker", "admin")  # the roles whose URL a process is given
WORKER_SECRET_VAR = "XERO_WORKER_SECRET"


def new_passwords() -> dict[str, str]:
    return {role.name: secrets.token_hex(24) for role in ROLES}


def new_worker_secret() -> str:
    return secrets.token_urlsafe(32)


def role_url(redis_url: str, role: str, password: str) -> str:
    """`redis_url` (no credentials) with `role` and `password` in it."""
    parts = urlsplit(redis_url)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname or "@" in parts.netloc:
        raise ValueError("expected redis:// or rediss:// with a host and no credentials")
    return urlunsplit(parts._replace(netloc=f"{role}:{password}@{parts.netloc}"))


def write_private(path: Path, text: str) -> None:
    """Create `path` readable by its owner only (never widened, even for a moment)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def k8s_secrets(namespace: str, redis_url: str, managed: bool) -> str:
    passwords, items = new_passwords(), []

    def secret(name: str, data: Mapping[str, str]) -> None:
        items.append(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "type": "Opaque",
                "metadata": {
                    "name": name,
                    "namespace": namespace,
                    "labels": {"app.kubernetes.io/part-of": "xero-router"},
                },
                "stringData": dict(data),
            }
        )

    secret("xero-redis", {f"{r}-url": role_url(redis_url, r, passwords[r]) for r in CLIENT_ROLES})
    if not managed:
        secret("xero-redis-users", passwords)
    secret("xero-worker-secret", {"secret": new_worker_secret()})
    # JSON is YAML: kubectl reads either.
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": items}, indent=2) + "\n"


def compose_env() -> str:
    passwords = new_passwords()
    lines = [
        "# docker compose's secrets, from `python3 -m deploy.redis.secrets compose`. Keep private.",
        *(f"{role.password_var}={passwords[role.name]}" for role in ROLES),
        f"{WORKER_SECRET_VAR}={new_worker_secret()}",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m deploy.redis.secrets")
    commands = parser.add_subparsers(dest="command", required=True)
    k8s = commands.add_parser("k8s", help="print the Kubernetes Secrets")
    k8s.add_argument("--namespace", default="xero")
    k8s.add_argument("--redis-url", default="redis://redis:6379/0", help="without credentials")
    k8s.add_argument("--managed", action="store_true", help="a managed Redis: no users Secret")
    compose = commands.add_parser("compose", help="write docker compose's .env")
    compose.add_argument("--out", type=Path, default=DEPLOY / "docker" / ".env")
    args = parser.parse_args(argv)
    try:
        if args.command == "k8s":
            sys.stdout.write(k8s_secrets(args.namespace, args.redis_url, args.managed))
        else:
            write_private(args.out, compose_env())
            print(f"wrote {args.out} (mode 0600)")
    except (ValueError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
