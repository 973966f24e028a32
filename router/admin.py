"""`python -m router admin ...`: manage projects, endpoints and API keys in Redis.

    admin [--redis-url URL] [--redis-prefix PREFIX] [--json] COMMAND

    COMMAND:
        project create NAME [--slug SLUG]
        project list
        project delete PROJECT_ID
        endpoint create PROJECT_ID NAME --model MODEL [--model ...]
        endpoint list PROJECT_ID
        endpoint delete PROJECT_ID NAME
        key create PROJECT_ID [--name LABEL] [--rpm N] [--tpm N]
                   [--max-concurrent N] [--expires-in 30d]
        key list PROJECT_ID
        key revoke KEY_ID
        key delete KEY_ID
        usage PROJECT_ID
        demo --model MODEL [--model ...] [--project demo]
             [--endpoint chat] [--env-file PATH]
             [--router-url URL] [--base-domain DOMAIN]

--redis-url defaults to $REDIS_URL, then redis://127.0.0.1:6379/0; --redis-prefix (the routers'
and workers' --redis-prefix) to $ROUTER_REDIS_PREFIX, then none. --json prints one JSON
document (times in unix ms); otherwise a short human listing. `key list` and `usage` show the
tokens routers counted (prompt, completion) and the requests that used any. `key create` prints
the clear key once; Redis keeps only its hash, so nothing can show it again. `demo` is idempotent
(see router.demo) and prints how to call the plain, path-based and DNS-based URLs. Exit status:
0 done, 1 failed (not found, invalid, Redis unreachable), 2 usage error.

This module is the command line only: the operations are router.tenant_admin and router.demo.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from contract.errors import ApiError
from contract.keyspace import Keyspace
from router import demo, tenant_admin
from router.tenants import list_endpoints

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DURATION_RE = re.compile(r"(\d+)([smhd]?)")
UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}

Result = dict[str, Any] | list[dict[str, Any]]
Command = Callable[["Redis[Any]", argparse.Namespace], Awaitable[Result]]


def _duration_s(text: str) -> int:
    match = DURATION_RE.fullmatch(text.strip())
    if not match or int(match.group(1)) == 0:
        raise argparse.ArgumentTypeError(
            f"expected a duration like 3600, 90m, 12h or 30d: {text!r}"
        )
    return int(match.group(1)) * UNIT_S[match.group(2)]


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1: {text!r}")
    return int(text)


def _keyspace(text: str) -> Keyspace:
    try:
        return Keyspace(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# --- commands --------------------------------------------------------------------------------


async def _project_create(redis: Redis[Any], args: argparse.Namespace) -> Result:
    project = await tenant_admin.create_project(
        redis, args.name, slug=args.slug, keyspace=args.keyspace
    )
    return project.to_dict()


async def _project_list(redis: Redis[Any], args: argparse.Namespace) -> Result:
    return [p.to_dict() for p in await tenant_admin.list_projects(redis, keyspace=args.keyspace)]


async def _project_delete(redis: Redis[Any], args: argparse.Namespace) -> Result:
    await tenant_admin.delete_project(redis, args.project_id, keyspace=args.keyspace)
    return {"deleted": args.project_id}


async def _endpoint_create(redis: Redis[Any], args: argparse.Namespace) -> Result:
    endpoint = await tenant_admin.create_endpoint(
        redis, args.project_id, args.name, args.models, keyspace=args.keyspace
    )
    return endpoint.to_dict()


async def _endpoint_list(redis: Redis[Any], args: argparse.Namespace) -> Result:
    endpoints = await list_endpoints(redis, args.project_id, keyspace=args.keyspace)
    return [e.to_dict() for e in endpoints]


async def _endpoint_delete(redis: Redis[Any], args: argparse.Namespace) -> Result:
    await tenant_admin.delete_endpoint(redis, args.project_id, args.name, keyspace=args.keyspace)
    return {"deleted": args.name}


async def _key_create(redis: Redis[Any], args: argparse.Namespace) -> Result:
    new = await tenant_admin.create_key(
        redis,
        args.project_id,
        name=args.name,
        rpm=args.rpm,
        tpm=args.tpm,
        max_concurrent=args.max_concurrent,
        expires_ms=tenant_admin.expiry_ms(args.expires_in),
        keyspace=args.keyspace,
    )
    return tenant_admin.new_key_view(new)


async def _key_list(redis: Redis[Any], args: argparse.Namespace) -> Result:
    return await tenant_admin.keys_with_usage(redis, args.project_id, keyspace=args.keyspace)


async def _key_revoke(redis: Redis[Any], args: argparse.Namespace) -> Result:
    record = await tenant_admin.revoke_key(redis, args.key_id, keyspace=args.keyspace)
    return tenant_admin.key_view(record)


async def _key_delete(redis: Redis[Any], args: argparse.Namespace) -> Result:
    await tenant_admin.delete_key(redis, args.key_id, keyspace=args.keyspace)
    return {"deleted": args.key_id}


async def _usage(redis: Redis[Any], args: argparse.Namespace) -> Result:
    used = await tenant_admin.usage(redis, args.project_id, keyspace=args.keyspace)
    if args.json:
        return used
    project = {k: v for k, v in used.items() if k != "keys"}
    return [{"key_id": "(project)", **project}, *used["keys"]]  # one table: project, then keys


# --- parsing ---------------------------------------------------------------------------------


async def _demo(redis: Redis[Any], args: argparse.Namespace) -> Result:
    spec = demo.DemoSpec(
        models=tuple(args.models),
        project=args.project,
        endpoint=args.endpoint,
        env_file=args.env_file,
        router_url=args.router_url,
        base_domain=args.base_domain,
        keyspace=args.keyspace,
    )
    return await demo.provision(redis, spec)


def _render_demo(result: Result) -> str:
    assert isinstance(result, dict)
    return demo.render(result)


@dataclass(frozen=True, slots=True)
class _Commands:
    """Adds subcommands that also accept the common options after their name."""

    common: argparse.ArgumentParser

    def add(self, group: Any, name: str, command: Command, help_: str) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = group.add_parser(name, parents=[self.common], help=help_)
        sub.set_defaults(command=command)
        return sub


def build_parser() -> argparse.ArgumentParser:
    # The common options are accepted before the subcommand or after it; SUPPRESS keeps a
    # subparser from overwriting a value given earlier with its default.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--redis-url", default=argparse.SUPPRESS, help="default: $REDIS_URL")
    common.add_argument(
        "--redis-prefix",
        dest="keyspace",
        type=_keyspace,
        default=argparse.SUPPRESS,
        help="default: $ROUTER_REDIS_PREFIX",
    )
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS)

    parser = argparse.ArgumentParser(
        prog="python -m router admin", description="Manage projects, endpoints and API keys."
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("REDIS_URL", DEFAULT_REDIS_URL),
        help=f"default: $REDIS_URL, else {DEFAULT_REDIS_URL}",
    )
    parser.add_argument(
        "--redis-prefix",
        dest="keyspace",
        type=_keyspace,
        default=os.environ.get("ROUTER_REDIS_PREFIX", ""),
        help="the deployment's Redis key prefix; default: $ROUTER_REDIS_PREFIX, else none",
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    groups = parser.add_subparsers(dest="group", required=True)
    commands = _Commands(common)
    _add_project_commands(commands, groups)
    _add_endpoint_commands(commands, groups)
    _add_key_commands(commands, groups)
    commands.add(groups, "usage", _usage, "a project's tokens, and each key's").add_argument(
        "project_id"
    )
    _add_demo_command(commands, groups)
    return parser


def _add_project_commands(commands: _Commands, groups: Any) -> None:
    project = groups.add_parser("project", help="projects").add_subparsers(required=True)
    sub = commands.add(project, "create", _project_create, "create a project")
    sub.add_argument("name", help="display name")
    sub.add_argument("--slug", help="the middle part of its keys (default: from the name)")
    commands.add(project, "list", _project_list, "list projects")
    commands.add(
        project, "delete", _project_delete, "delete a project, its endpoints and keys"
    ).add_argument("project_id")


def _add_endpoint_commands(commands: _Commands, groups: Any) -> None:
    endpoint = groups.add_parser("endpoint", help="endpoints").add_subparsers(required=True)
    sub = commands.add(endpoint, "create", _endpoint_create, "create an endpoint")
    sub.add_argument("project_id")
    sub.add_argument("name", help="a DNS label, unique in the project")
    sub.add_argument(
        "--model", dest="models", action="append", required=True, help="a model it serves"
    )
    commands.add(endpoint, "list", _endpoint_list, "list a project's endpoints").add_argument(
        "project_id"
    )
    sub = commands.add(endpoint, "delete", _endpoint_delete, "delete an endpoint")
    sub.add_argument("project_id")
    sub.add_argument("name")


def _add_key_commands(commands: _Commands, groups: Any) -> None:
    key = groups.add_parser("key", help="API keys").add_subparsers(required=True)
    sub = commands.add(key, "create", _key_create, "create a key (printed once)")
    sub.add_argument("project_id")
    sub.add_argument("--name", default="", help="a label")
    sub.add_argument("--rpm", type=_positive_int, help="requests per minute")
    sub.add_argument("--tpm", type=_positive_int, help="tokens per minute")
    sub.add_argument(
        "--max-concurrent", type=_positive_int, help="requests in flight at once, all routers"
    )
    sub.add_argument("--expires-in", type=_duration_s, help="e.g. 3600, 90m, 12h, 30d")
    commands.add(key, "list", _key_list, "list a project's keys").add_argument("project_id")
    commands.add(key, "revoke", _key_revoke, "revoke a key").add_argument("key_id")
    commands.add(key, "delete", _key_delete, "delete a key").add_argument("key_id")


def _add_demo_command(commands: _Commands, groups: Any) -> None:
    sub = commands.add(groups, "demo", _demo, "make (once) a demo project, endpoint and key")
    sub.set_defaults(render=_render_demo)
    sub.add_argument(
        "--model", dest="models", action="append", required=True, help="a model it serves"
    )
    sub.add_argument("--project", default="demo", help="project name (default: demo)")
    sub.add_argument("--endpoint", default="chat", help="endpoint name (default: chat)")
    sub.add_argument(
        "--env-file", type=Path, help="where the key is kept (mode 0600) and reused from"
    )
    sub.add_argument(
        "--router-url",
        default=demo.DEFAULT_ROUTER_URL,
        help=f"for the examples ({demo.DEFAULT_ROUTER_URL})",
    )
    sub.add_argument(
        "--base-domain",
        type=lambda text: text.strip().strip(".").lower() or None,
        default=os.environ.get("ROUTER_BASE_DOMAIN") or None,
        help="the router's --base-domain, for the DNS-based example (env ROUTER_BASE_DOMAIN)",
    )


# --- output ----------------------------------------------------------------------------------


def _cell(name: str, value: Any) -> str:
    if value is None:
        return "-"
    if name.endswith("_ms") and isinstance(value, int):
        return datetime.fromtimestamp(value / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(value, list | tuple):
        return ",".join(map(str, value))
    return str(value) if value != "" else "-"


def render_text(result: Result) -> str:
    rows = result if isinstance(result, list) else [result]
    if not rows:
        return "(none)"
    columns = [c for c in rows[0] if c != "key"]
    table = [columns, *[[_cell(c, row.get(c)) for c in columns] for row in rows]]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip()
                     for line in table)  # fmt: skip


async def run(args: argparse.Namespace) -> Result:
    redis: Redis[Any] = Redis.from_url(args.redis_url)
    try:
        command: Command = args.command
        return await command(redis, args)
    finally:
        await redis.aclose()  # type: ignore[attr-defined]  # types-redis predates it


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # usage errors and --help: report the status, don't exit
        return exc.code if isinstance(exc.code, int) else 2
    try:
        result = asyncio.run(run(args))
    except (ApiError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except RedisError as exc:
        print(f"error: Redis: {exc}", file=sys.stderr)
        return 1
    render: Callable[[Result], str] = getattr(args, "render", render_text)
    if args.json:
        print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    else:
        print(render(result))
    if render is render_text and isinstance(result, dict) and "key" in result:
        if not args.json:
            print(f"key: {result['key']}")
        print("Store this key now: it is not shown again.", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
