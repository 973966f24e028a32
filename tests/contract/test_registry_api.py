"""The record's `api` field: what speaks at a worker's URL (worker.agent writes "openai")."""

from __future__ import annotations

from dataclasses import replace

import pytest

from contract.registry import InvalidRecord, WorkerApi, WorkerRecord, WorkerState


def record(**changes: object) -> WorkerRecord:
    base = WorkerRecord(
        worker_id="w1", model="m", url="http://127.0.0.1:9001", state=WorkerState.READY,
        slots=2, running=0, waiting=0, max_queue=0, device="cpu", started_ms=1, heartbeat_ms=2,
    )  # fmt: skip
    return replace(base, **changes)  # type: ignore[arg-type]


def test_the_api_round_trips_through_a_hash() -> None:
    stock = record(api=WorkerApi.OPENAI)
    assert stock.to_hash()["api"] == "openai"
    assert WorkerRecord.from_mapping(stock.to_hash()).api is WorkerApi.OPENAI


def test_a_record_written_before_the_field_reads_as_ours() -> None:
    old = {k.encode(): v.encode() for k, v in record().to_hash().items() if k != "api"}
    assert WorkerRecord.from_mapping(old).api is WorkerApi.XERO


@pytest.mark.parametrize("value", ["vllm", "", "OPENAI"])
def test_an_unknown_api_is_refused(value: str) -> None:
    raw = {**record().to_hash(), "api": value}
    with pytest.raises(InvalidRecord, match="api: unknown"):
        WorkerRecord.from_mapping(raw)
