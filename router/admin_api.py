"""The admin HTTP API: tenancy as JSON, so it can be automated. Off unless `--admin-port`.

    POST   /admin/v1/projects                          {name, slug?}              201 project
    GET    /admin/v1/projects                                                     list
    GET    /admin/v1/projects/{project_id}                                        project
    DELETE /admin/v1/projects/{project_id}             its endpoints, keys, usage too
    POST   /admin/v1/projects/{project_id}/endpoints   {name, models}             201 endpoint
    GET    /admin/v1/projects/{project_id}/endpoints                              list
    DELETE /admin/v1/projects/{project_id}/endpoints/{name}
    POST   /admin/v1/projects/{project_id}/keys        {name?, rpm?, tpm?, max_concurrent?,
                                                        expires_in_s?}    201 key, secret once
    GET    /admin/v1/projects/{project_id}/keys        no secrets; each with its usage
    GET    /admin/v1/projects/{project_id}/usage       the project's tokens, then each key's
    GET    /admin/v1/keys/{key_id}                                                key
    POST   /admin/v1/keys/{key_id}/revoke              routers refuse it within --key-cache-ttl-s
    DELETE /admin/v1/keys/{key_id}
    GET    /admin/v1/keys/{key_id}/usage

Every request carries `Authorization: Bearer <admin key>` (`--admin-key-file` or XERO_ADMIN_KEY,
compared in constant time), else 401 whatever the path. Lists are `{"object": "list", "data"}`;
deletes answer `{"deleted": id}`. The operations and their validation are router.tenant_admin's,
the same the CLI runs, so errors match it: 400 bad input (`param` names the field), 404 unknown
id, 409 a taken endpoint name, 503 Redis unreachable; all OpenAI-shaped.

It listens on its own port (same host as the router), never through the public one, and talks
to Redis through its own client (`--admin-redis-url`): under the deploy's ACL users only the
admin user may write tenancy.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson
from aiohttp import hdrs, web
from aiohttp.typedefs import Handler
from redis.asyncio import Redis
from redis.exceptions import NoPermissionError, RedisError

from contract.errors import (
    ApiError,
    AuthenticationFailed,
    InvalidRequest,
    ServiceUnavailable,
    for_http_status,
    internal_error_body,
)
from contract.keyspace import DEFAULT_KEYSPACE, Keyspace
from contract.options import ConfigError
from contract.secrets import ADMIN_KEY_ENV
from router import tenant_admin
from router.appkeys import CONFIG
from router.tenants import get_project, list_endpoints

logger = logging.getLogger(__name__)

PREFIX: Final = "/admin/v1"
MAX_BODY_BYTES: Final = 64 * 1024
SHUTDOWN_S: Final = 5.0  # every admin call is a few Redis round trips
REDIS_TIMEOUT_S: Final = 5.0
JSON: Final = "application/json"

Answer = tuple[int, Any]
Operation = Callable[["Admin", web.Request], Awaitable[Answer]]


@dataclass(frozen=True, slots=True)
class Admin:
    """What every admin handler needs: the admin Redis client, the keyspace, the key's digest."""

    redis: Redis[Any]
    keyspace: Keyspace
    key_digest: bytes


ADMIN = web.AppKey("admin", Admin)


def _digest(key: str) -> bytes:
    # Equal-length digests, so the comparison leaks neither content nor length.
    return hashlib.sha256(key.encode()).digest()


def _authenticate(request: web.Request, admin: Admin) -> None:
    scheme, _, given = request.headers.get(hdrs.AUTHORIZATION, "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise AuthenticationFailed("The admin API needs `Authorization: Bearer <admin key>`.")
    if not hmac.compare_digest(_digest(given.strip()), admin.key_digest):
        raise AuthenticationFailed("Incorrect admin key.")


def _error(exc: ApiError, status: int | None = None) -> web.Response:
    headers = exc.headers()
    if isinstance(exc, AuthenticationFailed):
        headers[hdrs.WWW_AUTHENTICATE] = "Bearer"
    return web.Response(
        status=status or exc.status, body=exc.body(), content_type=JSON, headers=headers
    )


@web.middleware
async def admin_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Authenticate first (so an unknown path says nothing to a stranger), then OpenAI errors."""
    try:
        _authenticate(request, request.app[ADMIN])
        return await handler(request)
    except ApiError as exc:
        return _error(exc)
    except web.HTTPException as exc:
        error = for_http_status(exc.status, request.method, request.path, exc.reason)
        if error is None:
            raise
        return _error(error, exc.status)
    except NoPermissionError:
        logger.error(
            "admin %s %s: NOPERM: --admin-redis-url needs a user that may write tenancy",
            request.method,
            request.path,
        )
        return _error(ServiceUnavailable("The admin API's Redis user may not write tenancy."))
    except RedisError as exc:
        logger.warning("admin %s %s: Redis: %s", request.method, request.path, exc)
        return _error(ServiceUnavailable("Redis is unreachable.", retry_after_s=1))
    except Exception:
        logger.exception("unhandled error in admin %s %s", request.method, request.path)
        return web.Response(status=500, body=internal_error_body(), content_type=JSON)


# --- request bodies --------------------------------------------------------------------------


def _models(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(m, str) for m in value)


KINDS: Final[Mapping[str, tuple[Callable[[Any], bool], str]]] = {
    "str": (lambda v: isinstance(v, str), "a string"),
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "models": (_models, "a list of model ids"),
}


async def _body(
    request: web.Request, required: Mapping[str, str], optional: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The JSON object sent, its fields of the kinds named (None counts as absent if optional)."""
    raw = await request.read()
    try:
        body = orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError:
        raise InvalidRequest("The body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise InvalidRequest("The body must be a JSON object.")
    spec = {**(optional or {}), **required}
    unknown = sorted(body.keys() - spec.keys())
    if unknown:
        raise InvalidRequest(f"Unknown field `{unknown[0]}`.", param=unknown[0])
    for name, kind in spec.items():
        value = body.get(name)
        if value is None:
            if name in required:
                raise InvalidRequest(f"`{name}` is required.", param=name)
            continue
        check, what = KINDS[kind]
        if not check(value):
            raise InvalidRequest(f"`{name}` must be {what}.", param=name)
    return {k: v for k, v in body.items() if v is not None}


def _listing(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"object": "list", "data": items}


# --- operations: router.tenant_admin, serialised ---------------------------------------------


async def _create_project(admin: Admin, request: web.Request) -> Answer:
    body = await _body(request, {"name": "str"}, {"slug": "str"})
    project = await tenant_admin.create_project(
        admin.redis, body["name"], slug=body.get("slug"), keyspace=admin.keyspace
    )
    return 201, project.to_dict()


async def _list_projects(admin: Admin, request: web.Request) -> Answer:
    projects = await tenant_admin.list_projects(admin.redis, keyspace=admin.keyspace)
    return 200, _listing([p.to_dict() for p in projects])


async def _get_project(admin: Admin, request: web.Request) -> Answer:
    pid = request.match_info["project_id"]
    return 200, (await get_project(admin.redis, pid, keyspace=admin.keyspace)).to_dict()


async def _delete_project(admin: Admin, request: web.Request) -> Answer:
    project = await get_project(
        admin.redis, request.match_info["project_id"], keyspace=admin.keyspace
    )
    await tenant_admin.delete_project(admin.redis, project.project_id, keyspace=admin.keyspace)
    return 200, {"deleted": project.project_id}


async def _create_endpoint(admin: Admin, request: web.Request) -> Answer:
    body = await _body(request, {"name": "str", "models": "models"})
    endpoint = await tenant_admin.create_endpoint(
        admin.redis,
        request.match_info["project_id"],
        body["name"],
        body["models"],
        keyspace=admin.keyspace,
    )
    return 201, endpoint.to_dict()


async def _list_endpoints(admin: Admin, request: web.Request) -> Answer:
    pid = request.match_info["project_id"]
    endpoints = await list_endpoints(admin.redis, pid, keyspace=admin.keyspace)
    return 200, _listing([e.to_dict() for e in endpoints])


async def _delete_endpoint(admin: Admin, request: web.Request) -> Answer:
    pid, name = request.match_info["project_id"], request.match_info["name"]
    await tenant_admin.delete_endpoint(admin.redis, pid, name, keyspace=admin.keyspace)
    return 200, {"deleted": name}


async def _create_key(admin: Admin, request: web.Request) -> Answer:
    limits = {"rpm": "int", "tpm": "int", "max_concurrent": "int"}
    body = await _body(request, {}, {"name": "str", "expires_in_s": "int", **limits})
    new = await tenant_admin.create_key(
        admin.redis,
        request.match_info["project_id"],
        name=body.get("name", ""),
        expires_ms=tenant_admin.expiry_ms(body.get("expires_in_s")),
        keyspace=admin.keyspace,
        **{name: body.get(name) for name in limits},
    )
    return 201, tenant_admin.new_key_view(new)


async def _list_keys(admin: Admin, request: web.Request) -> Answer:
    pid = request.match_info["project_id"]
    keys = await tenant_admin.keys_with_usage(admin.redis, pid, keyspace=admin.keyspace)
    return 200, _listing(keys)


async def _project_usage(admin: Admin, request: web.Request) -> Answer:
    pid = request.match_info["project_id"]
    return 200, await tenant_admin.usage(admin.redis, pid, keyspace=admin.keyspace)


async def _get_key(admin: Admin, request: web.Request) -> Answer:
    key_id = request.match_info["key_id"]
    record = await tenant_admin.get_key(admin.redis, key_id, keyspace=admin.keyspace)
    return 200, tenant_admin.key_view(record)


async def _revoke_key(admin: Admin, request: web.Request) -> Answer:
    key_id = request.match_info["key_id"]
    record = await tenant_admin.revoke_key(admin.redis, key_id, keyspace=admin.keyspace)
    return 200, tenant_admin.key_view(record)


async def _delete_key(admin: Admin, request: web.Request) -> Answer:
    key_id = request.match_info["key_id"]
    await tenant_admin.delete_key(admin.redis, key_id, keyspace=admin.keyspace)
    return 200, {"deleted": key_id}


async def _key_usage(admin: Admin, request: web.Request) -> Answer:
    key_id = request.match_info["key_id"]
    return 200, await tenant_admin.key_usage(admin.redis, key_id, keyspace=admin.keyspace)


PROJECT = "/projects/{project_id}"
KEY = "/keys/{key_id}"
ROUTES: Final[tuple[tuple[str, str, Operation], ...]] = (
    ("POST", "/projects", _create_project),
    ("GET", "/projects", _list_projects),
    ("GET", PROJECT, _get_project),
    ("DELETE", PROJECT, _delete_project),
    ("POST", PROJECT + "/endpoints", _create_endpoint),
    ("GET", PROJECT + "/endpoints", _list_endpoints),
    ("DELETE", PROJECT + "/endpoints/{name}", _delete_endpoint),
    ("POST", PROJECT + "/keys", _create_key),
    ("GET", PROJECT + "/keys", _list_keys),
    ("GET", PROJECT + "/usage", _project_usage),
    ("GET", KEY, _get_key),
    ("POST", KEY + "/revoke", _revoke_key),
    ("DELETE", KEY, _delete_key),
    ("GET", KEY + "/usage", _key_usage),
)


def _handler(operation: Operation) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        status, result = await operation(request.app[ADMIN], request)
        return web.Response(status=status, body=orjson.dumps(result), content_type=JSON)

    return handle


def create_admin_app(
    redis: Redis[Any], admin_key: str, *, keyspace: Keyspace = DEFAULT_KEYSPACE
) -> web.Application:
    """The admin API over `redis` (a client allowed to write tenancy), guarded by `admin_key`."""
    if not admin_key:
        raise ValueError("the admin API needs a key")
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[admin_middleware])
    app[ADMIN] = Admin(redis, keyspace, _digest(admin_key))
    for method, path, operation in ROUTES:
        app.router.add_route(method, PREFIX + path, _handler(operation))
    return app


async def admin_site_ctx(app: web.Application) -> AsyncIterator[None]:
    """The router's cleanup_ctx for `--admin-port`: its own Redis client and listener."""
    config = app[CONFIG]
    admin_key = config.admin_key(os.environ)
    if admin_key is None:  # router.cli refuses this first; create_app's other callers too
        raise ConfigError(f"--admin-port needs a key: --admin-key-file or ${ADMIN_KEY_ENV}")
    redis: Redis[Any] = Redis.from_url(
        config.admin_redis,
        socket_connect_timeout=config.connect_timeout_s,
        socket_timeout=REDIS_TIMEOUT_S,
    )
    runner = web.AppRunner(
        create_admin_app(redis, admin_key, keyspace=config.keyspace),
        access_log=None,
        shutdown_timeout=SHUTDOWN_S,
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, config.host, config.admin_port).start()
        yield
    finally:
        await runner.cleanup()
        await redis.aclose()  # type: ignore[attr-defined]  # types-redis predates it
