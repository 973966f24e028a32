"""`/v1/embeddings` and `/v1/completions` through the router with auth on, with the official
openai SDK: real processes (redis-server, a real SmolLM2 worker started with `--embedding`, a
fake-engine generating worker, a router), path-based and DNS-based URLs. The real model's raw
prompts are tested in tests/worker/test_llama_engine.py."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import openai
import pytest
from redis.asyncio import Redis

from contract.embeddings import decode_base64
from router import tenant_admin
from tests.processes import (
    MODEL_ID,
    HttpService,
    RedisServer,
    http_json,
    router_process,
    wait_until,
    worker_process,
)

pytest.importorskip("llama_cpp", reason="the embedding worker needs llama-cpp-python")
pytestmark = pytest.mark.llama

EMBED_ID = "smollm2-embed"
N_EMBD = 576
BASE_DOMAIN = "api.localtest"


async def _tenancy(redis_url: str) -> tuple[str, str]:
    """A project whose endpoint `gen` serves both models, and a key of it."""
    redis: Redis[bytes] = Redis.from_url(redis_url)
    try:
        project = await tenant_admin.create_project(redis, "Acme")
        await tenant_admin.create_endpoint(redis, project.project_id, "gen", [MODEL_ID, EMBED_ID])
        key = await tenant_admin.create_key(redis, project.project_id, name="main")
        return project.project_id, key.key
    finally:
        await redis.aclose()  # type: ignore[attr-defined]


def _models(router: HttpService) -> bool:
    return bool(http_json(router.url + "/health")[1]["models"] == 2)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, str]]:
    """(router URL, project id, key)."""
    tmp: Path = tmp_path_factory.mktemp("endpoints")
    redis = RedisServer.create(tmp)
    redis.start()
    embedder = worker_process(
        tmp, redis.url, "e0", extra=("--model-id", EMBED_ID, "--embedding", "on")
    )
    chat = worker_process(tmp, redis.url, "c0", engine="fake")
    router = router_process(tmp, redis.url, extra=("--base-domain", BASE_DOMAIN), auth=True)
    procs = [embedder, chat, router]
    try:
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.wait_healthy(timeout_s=60)
        wait_until(partial(_models, router), 10, "the router to see both workers")
        project_id, key = asyncio.run(_tenancy(redis.url))
        yield router.url, project_id, key
    finally:
        for service in [*procs, redis]:
            service.stop()


def sdk(base_url: str, key: str, **kwargs: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=60, **kwargs)


def bases(stack: tuple[str, str, str]) -> list[tuple[str, dict[str, str]]]:
    url, project_id, _ = stack
    dns = {"Host": f"gen.{project_id.lower()}.{BASE_DOMAIN}"}
    return [(f"{url}/{project_id}/gen/v1", {}), (f"{url}/{project_id}/v1", {}), (url + "/v1", dns)]


def test_embeddings_float_and_base64(stack: tuple[str, str, str]) -> None:
    texts = ["The cat sat on the mat.", "Stock prices fell today."]
    for base, headers in bases(stack):
        with sdk(base, stack[2], default_headers=headers) as client:
            plain = client.embeddings.create(model=EMBED_ID, input=texts, encoding_format="float")
            assert [d.index for d in plain.data] == [0, 1]
            assert [len(d.embedding) for d in plain.data] == [N_EMBD, N_EMBD]
            assert math.isclose(
                math.fsum(x * x for x in plain.data[0].embedding), 1.0, rel_tol=1e-4
            )
            assert plain.model == EMBED_ID and plain.usage.prompt_tokens > 0
            # Unset, the SDK asks for base64 and decodes it itself.
            decoded = client.embeddings.create(model=EMBED_ID, input=texts)
            assert decoded.data[0].embedding == pytest.approx(plain.data[0].embedding, abs=1e-6)
            raw = client.embeddings.with_raw_response.create(
                model=EMBED_ID, input=texts[0], encoding_format="base64"
            )
            packed = raw.http_response.json()["data"][0]["embedding"]
            assert decode_base64(packed) == pytest.approx(plain.data[0].embedding, abs=1e-6)


def test_embeddings_refusals(stack: tuple[str, str, str]) -> None:
    url, project_id, key = stack
    with sdk(f"{url}/{project_id}/gen/v1", key) as client:
        with pytest.raises(openai.BadRequestError) as bad:
            client.embeddings.create(model=EMBED_ID, input="a", dimensions=8)
        assert bad.value.body["param"] == "dimensions"  # type: ignore[index]
        with pytest.raises(openai.NotFoundError):  # a chat model does not embed
            client.embeddings.create(model=MODEL_ID, input="a")
    with (
        sdk(url + "/v1", "xero_nope_" + "A" * 43) as client,
        pytest.raises(openai.AuthenticationError),
    ):
        client.embeddings.create(model=EMBED_ID, input="a")


def test_text_completions_plain_and_streamed(stack: tuple[str, str, str]) -> None:
    _, _, key = stack
    for base_url, headers in bases(stack):
        with sdk(base_url, key, default_headers=headers) as client:
            done = client.completions.create(model=MODEL_ID, prompt="Once upon", max_tokens=4)
            assert done.object == "text_completion" and done.id.startswith("cmpl-")
            assert done.choices[0].text == " The quick brown fox"
            assert done.choices[0].finish_reason == "length"
            assert done.usage is not None and done.usage.completion_tokens == 4
            chunks = list(
                client.completions.create(
                    model=MODEL_ID,
                    prompt="Once upon",
                    max_tokens=4,
                    stream=True,
                    stream_options={"include_usage": True},
                )
            )
            text = "".join(c.choices[0].text for c in chunks if c.choices)
            assert text == done.choices[0].text
            assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 6


def test_text_completion_refusals(stack: tuple[str, str, str]) -> None:
    url, project_id, key = stack
    with sdk(f"{url}/{project_id}/gen/v1", key) as client:
        with pytest.raises(openai.BadRequestError) as bad:
            client.completions.create(model=MODEL_ID, prompt="Once", suffix="end")
        assert bad.value.body["param"] == "suffix"  # type: ignore[index]
        # The embedding worker does not complete text: it says so, as OpenAI does.
        with pytest.raises(openai.NotFoundError):
            client.completions.create(model=EMBED_ID, prompt="Once upon a time", max_tokens=5)
