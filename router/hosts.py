"""DNS-based naming: `my-endpoint.proj_abc123.<base-domain>` names a project and an endpoint.

Pure string work (no aiohttp, no Redis). Path-based naming (`/proj_X/my-endpoint/v1/...`) is
the router's URL routes; router.access takes whichever the request used.
"""

from __future__ import annotations

from contract.errors import NotFound
from router.tenants import ENDPOINT_RE, normalize_project_id


def parse_host(host: str, base_domain: str) -> tuple[str, str] | None:
    """`my-endpoint.proj_abc123.<base_domain>[:port]` -> ("proj_ABC123", "my-endpoint")."""
    host = host.strip().lower()
    name, sep, port = host.rpartition(":")
    if sep and port.isdigit():
        host = name
    host = host.rstrip(".")
    base = base_domain.strip().lower().strip(".")
    if not base or not host.endswith("." + base):
        return None
    labels = host[: -len(base) - 1].split(".")
    if len(labels) != 2 or not ENDPOINT_RE.fullmatch(labels[0]):
        return None
    project_id = normalize_project_id(labels[1])
    return (project_id, labels[0]) if project_id else None


def named_by_host(host: str, base_domain: str) -> tuple[str, str] | None:
    """(project id, endpoint) a Host names; None for a host outside the base domain (another
    name for this router: plain routing); NotFound for one inside it that names no endpoint."""
    lowered = host.lower()
    bare = lowered.rpartition(":")[0] or lowered
    if not bare.rstrip(".").endswith("." + base_domain):
        return None
    named = parse_host(host, base_domain)
    if named is None:
        raise NotFound(f"No endpoint is served at `{host}`.")
    return named
