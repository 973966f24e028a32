"""The local stack's secrets, made fresh by every `up` under RUN_DIR/secrets/ (a folder only its
owner can open; every file mode 0600):

    passwords.json   one Redis password per ACL role (deploy.redis.acl)
    users.acl        the ACL file redis-server loads (`--aclfile`)
    worker-secret    what routers send workers as `Authorization: Bearer` (`--worker-secret-file`)
    admin.env        REDIS_URL as the admin user: `env $(cat admin.env) python3 -m router admin`

Processes get them from their environment (REDIS_URL with the role's user and password, the
exporter's REDIS_PASSWORD) or from a file; never from a command line or the manifest.
"""

from __future__ import annotations

import json
import shutil
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from deploy.local.spec import StackSpec
from deploy.redis.acl import acl_file
from deploy.redis.secrets import new_passwords, new_worker_secret, role_url, write_private

HOST = "127.0.0.1"
# Which Redis user each kind of process connects as (the admin CLI is run by `up`, not a service).
ROLE_USER = {"router": "router", "worker": "worker", "admin": "admin"}


@dataclass(frozen=True, slots=True)
class StackSecrets:
    folder: Path
    passwords: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def paths(cls, run_dir: Path) -> StackSecrets:
        """Where the files go; no password read."""
        return cls(run_dir / "secrets")

    @classmethod
    def create(cls, run_dir: Path, spec: StackSpec) -> StackSecrets:
        """New passwords, ACL file and worker secret, replacing any earlier ones."""
        secrets = cls(run_dir / "secrets", new_passwords())
        shutil.rmtree(secrets.folder, ignore_errors=True)
        secrets.folder.mkdir(mode=0o700, parents=True)
        write_private(secrets.passwords_file, json.dumps(dict(secrets.passwords), indent=2))
        write_private(secrets.acl_file, acl_file(spec.redis_prefix, secrets.passwords))
        write_private(secrets.worker_secret_file, new_worker_secret())
        write_private(secrets.admin_env_file, f"REDIS_URL={secrets.url(spec.redis_url, 'admin')}\n")
        return secrets

    @classmethod
    def load(cls, run_dir: Path) -> StackSecrets | None:
        folder = run_dir / "secrets"
        try:
            passwords = json.loads((folder / "passwords.json").read_text())
        except (OSError, ValueError):
            return None
        return cls(folder, passwords)

    @property
    def passwords_file(self) -> Path:
        return self.folder / "passwords.json"

    @property
    def acl_file(self) -> Path:
        return self.folder / "users.acl"

    @property
    def worker_secret_file(self) -> Path:
        return self.folder / "worker-secret"

    @property
    def admin_env_file(self) -> Path:
        return self.folder / "admin.env"

    def url(self, redis_url: str, role: str) -> str:
        user = ROLE_USER[role]
        return role_url(redis_url, user, self.passwords[user])

    def env(self, role: str, redis_url: str) -> dict[str, str]:
        """What a process of `role` needs in its environment to reach Redis."""
        if role in ROLE_USER:
            return {"REDIS_URL": self.url(redis_url, role)}
        if role == "redis-exporter":
            return {"REDIS_PASSWORD": self.passwords["exporter"]}
        return {}

    def ping(self, port: int) -> bool:
        """Redis answers PING to the exporter's user (the default user is off)."""
        return auth_ping(port, "exporter", self.passwords["exporter"])


def auth_ping(port: int, user: str, password: str) -> bool:
    """AUTH as `user`, then PING: True if both succeed. Raises OSError if nothing listens."""
    with socket.create_connection((HOST, port), timeout=1) as sock:
        sock.sendall(_command("AUTH", user, password) + _command("PING"))
        reply = b""
        while reply.count(b"\r\n") < 2:
            chunk = sock.recv(64)
            if not chunk:
                break
            reply += chunk
    return reply == b"+OK\r\n+PONG\r\n"


def _command(*words: str) -> bytes:
    """One command in RESP: an array of bulk strings (a password may hold any byte)."""
    parts = [f"*{len(words)}\r\n".encode()]
    for word in words:
        data = word.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)
