"""The demo tenant behind `python -m router admin demo`: a project, an endpoint and a key.

Idempotent, so the local stack can run it on every start: it reuses the project with the demo's
name and its endpoint (re-creating the endpoint if it lacks a requested model), and the key saved
in the env file (mode 0600) while that key still works, else it mints one. The result says what
was made and how to call the plain, path-based and DNS-based URLs; render() prints it.
"""

from __future__ import annotations

import asyncio
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

import orjson

from contract.errors import AuthenticationFailed
from contract.keyspace import DEFAULT_KEYSPACE, Keyspace
from router import tenant_admin
from router.apikeys import authenticate
from router.tenants import Endpoint, KeyRecord, Project, find_endpoint

if TYPE_CHECKING:
    from redis.asyncio import Redis

DEFAULT_ROUTER_URL = "http://127.0.0.1:8080"


@dataclass(frozen=True, slots=True)
class DemoSpec:
    models: tuple[str, ...]
    project: str = "demo"  # the project's name
    endpoint: str = "chat"
    env_file: Path | None = None  # where the key is kept and reused from
    router_url: str = DEFAULT_ROUTER_URL  # for the printed examples
    base_domain: str | None = None  # the router's --base-domain, for the DNS-based example
    keyspace: Keyspace = DEFAULT_KEYSPACE  # the deployment's --redis-prefix


async def provision(redis: Redis[Any], spec: DemoSpec) -> dict[str, Any]:
    """Make what is missing of the demo tenant; the result is what `admin demo --json` prints."""
    ks = spec.keyspace
    project, project_created = await _project(redis, spec.project, ks)
    endpoint, endpoint_status = await _endpoint(redis, project, spec, ks)
    key = await asyncio.to_thread(_saved_key, spec.env_file) if spec.env_file else None
    record = await _reusable(redis, key, project, ks) if key is not None else None
    key_created = record is None
    if record is None or key is None:
        new = await tenant_admin.create_key(redis, project.project_id, name="demo", keyspace=ks)
        key, record = new.key, new.record

    urls = _urls(spec.router_url, project.project_id, endpoint.name, spec.base_domain)
    result: dict[str, Any] = {
        "project_id": project.project_id,
        "project_name": project.name,
        "project_created": project_created,
        "endpoint": endpoint.name,
        "models": list(endpoint.models),
        "endpoint_status": endpoint_status,
        "key": key,
        "key_id": record.key_id,
        "key_created": key_created,
        "env_file": str(spec.env_file) if spec.env_file else None,
        "base_domain": spec.base_domain,
        **urls,
    }
    if spec.env_file:
        await asyncio.to_thread(_save_env, spec.env_file, result)
    return result


async def _project(redis: Redis[Any], name: str, ks: Keyspace) -> tuple[Project, bool]:
    """The first project with this name, or a new one; and whether it was created."""
    listed = await tenant_admin.list_projects(redis, keyspace=ks)
    projects = [p for p in listed if p.name == name.strip()]
    if projects:
        return projects[0], False
    return await tenant_admin.create_project(redis, name, keyspace=ks), True


async def _endpoint(
    redis: Redis[Any], project: Project, spec: DemoSpec, ks: Keyspace
) -> tuple[Endpoint, str]:
    """The endpoint serving every model, and "existing", "created" or "replaced"."""
    pid, name = project.project_id, spec.endpoint
    endpoint = await find_endpoint(redis, pid, name, keyspace=ks)
    if endpoint is not None and all(endpoint.serves(m) for m in spec.models):
        return endpoint, "existing"
    status = "created" if endpoint is None else "replaced"  # re-pointed at a model
    if endpoint is not None:
        await tenant_admin.delete_endpoint(redis, pid, name, keyspace=ks)
    created = await tenant_admin.create_endpoint(redis, pid, name, spec.models, keyspace=ks)
    return created, status


async def _reusable(
    redis: Redis[Any], key: str, project: Project, ks: Keyspace
) -> KeyRecord | None:
    """The saved key's record while it still works for this project, else None."""
    try:
        record = await authenticate(redis, key, keyspace=ks)
    except AuthenticationFailed:  # revoked, expired, deleted, or Redis was emptied
        return None
    return record if record.project_id == project.project_id else None


def _urls(
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


# The first request a newcomer sends: with a system message and temperature 0 the default model
# (SmolLM2-135M) answers it in one short, correct sentence; without them it wanders.
EXAMPLE_MESSAGES: Final = (
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
)


def example_messages() -> str:
    """The example's messages as a Python (and JSON) literal in double quotes, for shell lines."""
    return orjson.dumps(list(EXAMPLE_MESSAGES)).decode()


def example_body(model: str) -> str:
    """The JSON body of the example chat request, as a shell's single-quoted argument."""
    body = {"model": model, "messages": list(EXAMPLE_MESSAGES), "temperature": 0}
    return shlex.quote(orjson.dumps(body).decode())


def render(result: dict[str, Any]) -> str:
    """What was made, the key, and how to call each kind of URL (curl and the openai SDK)."""
    key, model = result["key"], result["models"][0]
    auth = f'-H "Authorization: Bearer {key}"'
    body = f"-H 'Content-Type: application/json' -d {example_body(model)}"
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
        f"messages={example_messages()}, temperature=0)",
    ]
    return "\n".join(lines)
