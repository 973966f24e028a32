"""`python -m worker`: its --help, and SIGTERM draining a real process before it exits."""

from __future__ import annotations

import dataclasses
import http.client
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
from redis import Redis as SyncRedis

from contract.registry import worker_key
from tests.processes import MODEL_ID, http_json, wait_until, worker_process
from worker.config import WorkerConfig

from .test_fake_worker import CHAT, chat

REPO_ROOT = Path(__file__).resolve().parents[2]
FIELDS = dataclasses.fields(WorkerConfig)


def test_python_m_worker_help_lists_every_option_with_its_variable_and_default() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "worker", "--help"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    text = " ".join(done.stdout.split())
    options = {("--" + f.name.replace("_", "-"), "WORKER_" + f.name.upper()) for f in FIELDS}
    assert {o for o in options if o[0] in text and o[1] in text} == options
    for shown in (
        "REDIS_URL or REDIS_URL; required",
        "N_CTX; default 4096",
        "N_THREADS; default auto",
    ):
        assert "WORKER_" + shown in text
    assert "WORKER_ENGINE; default llama" in text


def test_sigterm_drains_in_flight_stream_then_exits(tmp_path: Path, redis_url: str) -> None:
    """The real CLI: SIGTERM lets the stream finish, deregisters, and exits 0."""
    worker = worker_process(
        tmp_path, redis_url, "w-sigterm", engine="fake", extra=("--fake-tokens-per-s", "20")
    )
    worker.start()
    try:
        worker.wait_healthy(timeout_s=20)
        redis = SyncRedis.from_url(redis_url)
        assert redis.exists(worker_key("w-sigterm")) == 1
        body: dict[str, bytes] = {}

        def stream() -> None:
            conn = http.client.HTTPConnection("127.0.0.1", worker.port, timeout=10)
            payload = orjson.dumps({**chat(stream=True, max_tokens=10), "model": MODEL_ID})
            try:
                conn.request(
                    "POST", CHAT, body=payload, headers={"Content-Type": "application/json"}
                )
                body["raw"] = conn.getresponse().read()
            finally:
                conn.close()

        client = threading.Thread(target=stream)
        client.start()
        wait_until(lambda: http_json(worker.url + "/health")[1]["running"] == 1, 5, "running")
        worker.signal(signal.SIGTERM)
        wait_until(lambda: http_json(worker.url + "/health")[0] == 503, 5, "draining")
        client.join(10)
        assert body["raw"].endswith(b"data: [DONE]\n\n")
        assert body["raw"].count(b'"content":" ') == 10
        assert worker.proc is not None
        assert worker.proc.wait(10) == 0
        assert redis.exists(worker_key("w-sigterm")) == 0
        redis.close()
    finally:
        worker.stop()


def test_the_record_appears_only_once_the_port_listens(tmp_path: Path, redis_url: str) -> None:
    """A router that hears of the worker must find its port open: registration follows listen."""
    worker = worker_process(tmp_path, redis_url, "w-listen", engine="fake")
    redis = SyncRedis.from_url(redis_url)
    worker.start()
    try:
        deadline = time.monotonic() + 20
        while not redis.exists(worker_key("w-listen")):
            assert time.monotonic() < deadline, "the worker never registered"
            time.sleep(0.001)
        with socket.create_connection(("127.0.0.1", worker.port), timeout=1):
            pass  # refused would raise ConnectionRefusedError
    finally:
        worker.stop()
        redis.close()
