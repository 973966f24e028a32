"""DNS-based naming: which project and endpoint a Host names, and which hosts name nothing."""

from __future__ import annotations

import pytest

from contract.errors import NotFound
from router.hosts import named_by_host, parse_host


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("my-endpoint.proj_ABC123.api.example.com", ("proj_ABC123", "my-endpoint")),
        ("my-endpoint.proj_abc123.API.example.com:8443", ("proj_ABC123", "my-endpoint")),
        ("my-endpoint.proj_abc123.api.example.com.", ("proj_ABC123", "my-endpoint")),
        ("api.example.com", None),
        ("proj_ABC123.api.example.com", None),
        ("a.b.proj_ABC123.api.example.com", None),
        ("my-endpoint.proj_ABC123.evil.com", None),
        ("my-endpoint.proj_ABC123.xapi.example.com", None),
        ("my-endpoint.project.api.example.com", None),
        ("My_Endpoint.proj_ABC123.api.example.com", None),
        ("", None),
    ],
)
def test_parse_host(host: str, expected: tuple[str, str] | None) -> None:
    assert parse_host(host, "api.example.com") == expected


def test_named_by_host() -> None:
    base = "api.example.com"
    assert named_by_host("chat.proj_abc.api.example.com:8080", base) == ("proj_ABC", "chat")
    # Other names for this router route plainly.
    for host in ("localhost:8080", "127.0.0.1", "api.example.com", "chat.proj_abc.evil.com"):
        assert named_by_host(host, base) is None
    # Under the base domain, a Host that names no endpoint is a 404, not plain routing.
    for host in ("x.y.z.api.example.com", "chat.project.api.example.com"):
        with pytest.raises(NotFound, match="No endpoint is served at"):
            named_by_host(host, base)
