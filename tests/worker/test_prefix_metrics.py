"""A worker counts the prompt tokens its engine evaluated and those it reused from its cache."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from .conftest import MODEL, StartWorker

CHAT = "/v1/chat/completions"
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "Say something please"}]}


def counter(text: str, name: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name + "_total":
                return sample.value
    raise AssertionError(f"no {name}")


async def test_evaluated_and_cached_prompt_tokens_are_counted(start_worker: StartWorker) -> None:
    client = await start_worker()
    for _ in range(2):  # the same 7-token prompt twice: the second reuses 6 of them
        body = await (await client.post(CHAT, json=BODY)).json()
    assert body["usage"]["prompt_tokens_details"] == {"cached_tokens": 6}
    text = await (await client.get("/metrics")).text()
    assert counter(text, "worker_prompt_tokens_evaluated") == 7 + 1
    assert counter(text, "worker_prompt_tokens_cached") == 6
