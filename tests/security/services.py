"""What the security suites share: real processes started and stopped together, plain HTTP calls
to them, and metric samples read from their /metrics."""

from __future__ import annotations

import contextlib
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.processes import MODEL_ID, HttpService

CHAT = "/v1/chat/completions"


@contextlib.contextmanager
def running(*services: HttpService, timeout_s: float = 30.0) -> Iterator[None]:
    """Start every service, wait until each answers /health, stop them all (in reverse) after."""
    try:
        for service in services:
            service.start()
        for service in services:
            service.wait_healthy(timeout_s)
        yield
    finally:
        for service in reversed(services):
            service.stop()


def post_chat(base_url: str, model: str = MODEL_ID, timeout_s: float = 10.0) -> tuple[int, Any]:
    """One short chat completion through a router (auth off): its status and JSON body."""
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    request = urllib.request.Request(
        base_url + CHAT,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def scrape(url: str) -> str:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as response:
        text: str = response.read().decode()
        return text


def sample(text: str, name: str, **labels: str) -> float:
    """The sum of the samples named `name` whose labels include `labels` (0 if none)."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == name and labels.items() <= found.labels.items():
                total += found.value
    return total
