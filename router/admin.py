"""`python -m router admin ...`: manage projects, endpoints and API keys in Redis.

    admin [--redis-url URL] [--json] project create NAME [--slug SLUG]
                                     project list
                                     project delete PROJECT_ID
                                     endpoint create PROJECT_ID NAME --model MODEL [--model ...]
                                     endpoint list PROJECT_ID
                                     endpoint delete PROJECT_ID NAME
                                     key create PROJECT_ID [--name LABEL] [--rpm N] [--tpm N]
                                                [--expires-in 30d]
                                     key list PROJECT_ID
                                     key revoke KEY_ID
                                     key delete KEY_ID
                                     demo --model MODEL [--model ...] [--project demo]
                                          [--endpoint chat] [--env-file PATH]
                                          [--router-url URL] [--base-domain DOMAIN]

--redis-url defaults to $REDIS_URL, then redis://127.0.0.1:6379/0. --json prints one JSON
document (times in unix ms); otherwise a short human listing. `key create` prints the clear key
once; Redis keeps only its hash, so nothing can show it again. `demo` is idempotent: it reuses the
project named `demo` and its endpoint `chat` when they exist (re-creating the endpoint if it lacks
a requested model), and the key saved in --env-file (mode 0600) while that key still works, else
it mints one; it prints how to call the plain, path-based and DNS-based URLs. Exit status: 0 done,
1 failed (not found, invalid, Redis unreachable), 2 usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shlex
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from contract.errors import ApiError, AuthenticationFailed
from contract.registry import now_ms
from router import tenancy

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_ROUTER_URL = "http://127.0.0.1:8080"
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


def _key_dict(record: tenancy.KeyRecord) -> dict[str, Any]:
    return {**record.to_dict(), "status": record.status(now_ms())}


# --- commands --------------------------------------------------------------------------------


async def _project_create(redis: Redis[Any], args: argparse.Namespace) -> Result:
    return (await tenancy.create_project(redis, args.name, slug=args.slug)).to_dict()


async def _project_list(redis: Redis[Any], args: argparse.Namespace) -> Result:
    return [p.to_dict() for p in await tenancy.list_projects(redis)]


async def _project_delete(redis: Redis[Any], args: argparse.Namespace) -> Result:
    await tenancy.delete_project(redis, args.project_id)
    return {"deleted": args.project_id}


async def _endpoint_create(redis: Redis[Any], args: argparse.Namespace) -> Result:
    endpoint = await tenancy.create_endpoint(redis, args.project_id, args.name, args.models)
    return endpoint.to_dict()


async def _endpoint_list(redis: Redis[Any], args: argparse.Namespace) -> Result:
    return [e.to_dict() for e in await tenancy.list_endpoints(redis, args.project_id)]


async def _endpoint_delete(redis: Redis[Any], args: argparse.Namespace) -> Result:
    await tenancy.delete_endpoint(redis, args.project_id, args.name)
    return {"deleted": args.name}


async def _key_create(redis: Redis[Any], args: argparse.Namespace) -> Result:
    expires_ms = None if args.expires_in is None else now_ms() + args.expires_in * 1000
    new = await tenancy.create_key(
        redis, args.project_id, name=args.name, rpm=args.rpm, tpm=args.tpm, expires_ms=expires_ms
    )
    return {"key": new.key, **_key_dict(new.record)}


async def _key_list(redis: Redis[Any], args: argparse.Namespace) -> Result:
    return [_key_dict(k) for k in await tenancy.list_keys(redis, args.project_id)]


async def _key_revoke(redis: Redis[Any], args: argparse.Namespace) -> Result:
    return _key_dict(await tenancy.revoke_key(redis, args.key_id))


async def _key_delete(redis: Redis[Any], args: argparse.Namespace) -> Result:
    await tenancy.delete_key(redis, args.key_id)
    return {"deleted": args.key_id}


# --- demo ------------------------------------------------------------------------------------


async def _demo(redis: Redis[Any], args: argparse.Namespace) -> Result:
    """A demo project, endpoint and key, made once: every step reuses what is already there."""
    projects = [p for p in await tenancy.list_projects(redis) if p.name == args.project.strip()]
    project = projects[0] if projects else await tenancy.create_project(redis, args.project)
    endpoint = await tenancy.find_endpoint(redis, project.project_id, args.endpoint)
    endpoint_status = "existing"
    if endpoint is None or not all(endpoint.serves(m) for m in args.models):
        endpoint_status = "created" if endpoint is None else "replaced"  # re-pointed at a model
        if endpoint is not None:
            await tenancy.delete_endpoint(redis, project.project_id, args.endpoint)
        endpoint = await tenancy.create_endpoint(
            redis, project.project_id, args.endpoint, args.models
        )

    env_file: Path | None = args.env_file
    key = await asyncio.to_thread(_saved_key, env_file) if env_file else None
    record: tenancy.KeyRecord | None = None
    if key is not None:
        try:
            record = await tenancy.authenticate(redis, key)
        except AuthenticationFailed:  # revoked, expired, deleted, or Redis was emptied
            record = None
        if record is not None and record.project_id != project.project_id:
            record = None
    key_created = record is None
    if record is None or key is None:
        new = await tenancy.create_key(redis, project.project_id, name="demo")
        key, record = new.key, new.record

    urls = _demo_urls(args.router_url, project.project_id, endpoint.name, args.base_domain)
    result: dict[str, Any] = {
        "project_id": project.project_id,
        "project_name": project.name,
        "project_created": not projects,
        "endpoint": endpoint.name,
        "models": list(endpoint.models),
        "endpoint_status": endpoint_status,
        "key": key,
        "key_id": record.key_id,
        "key_created": key_created,
        "env_file": str(env_file) if env_file else None,
        "base_domain": args.base_domain,
        **urls,
    }
    if env_file:
        await asyncio.to_thread(_save_env, env_file, result)
    return result


def _demo_urls(
    router_url: str, project_id: str, endpoint: str, base_domain: str | None
) -> dict[str, str | None]:
    parts = urlsplit(router_url.rstrip("/"))
    root = f"{parts.scheme}://{parts.netloc}{parts.path}"
    host = f"{endpoint}.{project_id.lower()}.{base_domain}" if base_domain else None
    port = f":{parts.port}" if parts.port else ""
    return {
        "plain_base_url": f"{root}/v1",
        "path_base_url": f"{root}/{project_id}/{endpoint}/v1",
        "dns_host": host,
        "dns_base_url": f"{parts.scheme}://{host}{port}/v1" if host else None,
    }


def _saved_key(path: Path) -> str | None:
    """DEMO_KEY from an env file written by _save_env, if there is one."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return None
    for line in lines:
        name, sep, value = line.partition("=")
        if sep and name.strip() == "DEMO_KEY":
            words = shlex.split(value)
            return words[0] if words else None
    return None


def _save_env(path: Path, result: dict[str, Any]) -> None:
    """A shell-sourceable file, readable by its owner only (it holds the key)."""
    values = {
        "DEMO_PROJECT": result["project_id"],
        "DEMO_ENDPOINT": result["endpoint"],
        "DEMO_MODEL": result["models"][0],
        "DEMO_KEY": result["key"],
        "DEMO_BASE_URL": result["path_base_url"],
    }
    text = "".join(f"{name}={shlex.quote(value)}\n" for name, value in values.items())
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".tmp")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # in case a stale partial file had other permissions
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(partial, path)


def render_demo(result: Result) -> str:
    assert isinstance(result, dict)
    key, model = result["key"], result["models"][0]
    auth = f'-H "Authorization: Bearer {key}"'
    body = (
        "-H 'Content-Type: application/json' "
        f'-d \'{{"model": "{model}", "messages": [{{"role": "user", '
        '"content": "Hello"}]}\''
    )
    state = "created" if result["project_created"] else "existing"
    saved = f" (saved in {result['env_file']})" if result["env_file"] else ""
    lines = [
        f"project   {result['project_id']} ({result['project_name']}): {state}",
        f"endpoint  {result['endpoint']} serving {', '.join(result['models'])}: "
        f"{result['endpoint_status']}",
        f"key       {result['key_id']}: {'created' if result['key_created'] else 'reused'}{saved}",
        f"API key:  {key}",
    ]
    if result["key_created"] and not result["env_file"]:
        lines.append("Store this key now: it is not shown again.")
    path_url = result["path_base_url"]
    lines += [
        "",
        f"Path-based: base_url={path_url}",
        f"  curl -s {path_url}/chat/completions {auth} \\",
        f"    {body}",
        f"  curl -s {path_url}/models {auth}",
    ]
    if result["dns_host"]:
        plain = result["plain_base_url"]
        lines += [
            f"DNS-based:  base_url={result['dns_base_url']}",
            "  (the router needs --base-domain "
            f"{result['base_domain']}; where that name does not resolve, send its Host header:)",
            f'  curl -s {plain}/chat/completions -H "Host: {result["dns_host"]}" {auth} \\',
            f"    {body}",
        ]
    else:
        lines.append(
            "DNS-based:  start the router with --base-domain DOMAIN and pass the same "
            "--base-domain here for its URL"
        )
    lines += [
        f"Plain:      base_url={result['plain_base_url']} (the key names the project)",
        "Python:",
        f"  client = openai.OpenAI(base_url={path_url!r}, api_key={key!r})",
        f"  client.chat.completions.create(model={model!r}, "
        "messages=[{'role': 'user', 'content': 'Hello'}])",
    ]
    return "\n".join(lines)


# --- parsing ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    # The common options are accepted before the subcommand or after it; SUPPRESS keeps a
    # subparser from overwriting a value given earlier with its default.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--redis-url", default=argparse.SUPPRESS, help="default: $REDIS_URL")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS)

    parser = argparse.ArgumentParser(
        prog="python -m router admin", description="Manage projects, endpoints and API keys."
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("REDIS_URL", DEFAULT_REDIS_URL),
        help=f"default: $REDIS_URL, else {DEFAULT_REDIS_URL}",
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    groups = parser.add_subparsers(dest="group", required=True)

    def action(group: Any, name: str, command: Command, help_: str) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = group.add_parser(name, parents=[common], help=help_)
        sub.set_defaults(command=command)
        return sub

    project = groups.add_parser("project", help="projects").add_subparsers(required=True)
    sub = action(project, "create", _project_create, "create a project")
    sub.add_argument("name", help="display name")
    sub.add_argument("--slug", help="the middle part of its keys (default: from the name)")
    action(project, "list", _project_list, "list projects")
    action(
        project, "delete", _project_delete, "delete a project, its endpoints and keys"
    ).add_argument("project_id")

    endpoint = groups.add_parser("endpoint", help="endpoints").add_subparsers(required=True)
    sub = action(endpoint, "create", _endpoint_create, "create an endpoint")
    sub.add_argument("project_id")
    sub.add_argument("name", help="a DNS label, unique in the project")
    sub.add_argument(
        "--model", dest="models", action="append", required=True, help="a model it serves"
    )
    action(endpoint, "list", _endpoint_list, "list a project's endpoints").add_argument(
        "project_id"
    )
    sub = action(endpoint, "delete", _endpoint_delete, "delete an endpoint")
    sub.add_argument("project_id")
    sub.add_argument("name")

    key = groups.add_parser("key", help="API keys").add_subparsers(required=True)
    sub = action(key, "create", _key_create, "create a key (printed once)")
    sub.add_argument("project_id")
    sub.add_argument("--name", default="", help="a label")
    sub.add_argument("--rpm", type=_positive_int, help="requests per minute")
    sub.add_argument("--tpm", type=_positive_int, help="tokens per minute")
    sub.add_argument("--expires-in", type=_duration_s, help="e.g. 3600, 90m, 12h, 30d")
    action(key, "list", _key_list, "list a project's keys").add_argument("project_id")
    action(key, "revoke", _key_revoke, "revoke a key").add_argument("key_id")
    action(key, "delete", _key_delete, "delete a key").add_argument("key_id")

    sub = action(groups, "demo", _demo, "make (once) a demo project, endpoint and key")
    sub.set_defaults(render=render_demo)
    sub.add_argument(
        "--model", dest="models", action="append", required=True, help="a model it serves"
    )
    sub.add_argument("--project", default="demo", help="project name (default: demo)")
    sub.add_argument("--endpoint", default="chat", help="endpoint name (default: chat)")
    sub.add_argument(
        "--env-file", type=Path, help="where the key is kept (mode 0600) and reused from"
    )
    sub.add_argument(
        "--router-url", default=DEFAULT_ROUTER_URL, help=f"for the examples ({DEFAULT_ROUTER_URL})"
    )
    sub.add_argument(
        "--base-domain",
        type=lambda text: text.strip().strip(".").lower() or None,
        default=os.environ.get("ROUTER_BASE_DOMAIN") or None,
        help="the router's --base-domain, for the DNS-based example (env ROUTER_BASE_DOMAIN)",
    )
    return parser


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
