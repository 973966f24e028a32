"""worker.models: hub specs, the directory rule, the offline cache, corruption, re-download.

The hub is never reached: an offline cache is built by hand (tests.worker.hub_cache) and the
downloads go to a stand-in hub, an aiohttp app serving `/{repo}/resolve/{rev}/{file}` with the
headers huggingface_hub reads (X-Repo-Commit, X-Linked-Etag, X-Linked-Size).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from worker.config import ConfigError, load_config, resolve_model_path
from worker.models import HubFile, ModelError, cache_problem, fetch, local_model, main, pick_gguf

from .hub_cache import fill_hub_cache

REPO_ROOT = Path(__file__).resolve().parents[2]
REPO = "org/models"
CONTENT = b"GGUF" + bytes(range(256)) * 64
COMMIT = "c" * 40
DROP = "drop halfway"
BASE = ["--model-id", "m", "--redis-url", "redis://127.0.0.1:6379/0", "--engine", "fake"]


@pytest.fixture
def hub() -> None:
    pytest.importorskip("huggingface_hub", reason="the `hub` extra is not installed")


@pytest.fixture
def gguf(tmp_path: Path) -> Path:
    path = tmp_path / "src" / "tiny.gguf"
    path.parent.mkdir()
    path.write_bytes(CONTENT)
    return path


@pytest.fixture
def cache(tmp_path: Path, gguf: Path) -> Path:
    """A cache holding `org/models`' tiny.gguf as a copied blob (so tests may damage it)."""
    root = tmp_path / "cache"
    fill_hub_cache(root, REPO, "tiny.gguf", gguf, commit=COMMIT, copy=True)
    return root


def blob_of(cache: Path) -> Path:
    return cache / "models--org--models" / "blobs" / hashlib.sha256(CONTENT).hexdigest()


# -- specs and directories --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("hf:org/repo/m.gguf", HubFile("org/repo", "m.gguf")),
        ("hf:org/repo/sub/m.Q4.gguf@v1.0", HubFile("org/repo", "sub/m.Q4.gguf", "v1.0")),
        (f"hf:org/repo/m.gguf@{COMMIT}", HubFile("org/repo", "m.gguf", COMMIT)),
    ],
)
def test_hub_specs_parse_and_print_back(spec: str, expected: HubFile) -> None:
    assert HubFile.parse(spec) == expected
    assert str(expected) == spec


@pytest.mark.parametrize(
    "spec",
    ["hf:org/repo", "hf:org/repo/m.bin", "hf:org//m.gguf", "hf:org/repo/m.gguf@", "hf:../r/m.gguf"],
)
def test_malformed_hub_specs_are_refused_with_the_expected_form(spec: str) -> None:
    with pytest.raises(ModelError, match=r"expected hf:ORG/REPO/FILE\.gguf"):
        HubFile.parse(spec)


def test_a_directory_with_one_gguf_names_it(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("x")
    (tmp_path / "nested.gguf").mkdir()  # a directory, not a model
    (tmp_path / "m.gguf").write_bytes(CONTENT)
    assert pick_gguf(str(tmp_path)) == str(tmp_path / "m.gguf")
    assert local_model(str(tmp_path) + "/") == str(tmp_path / "m.gguf")


def test_a_directory_with_none_or_several_is_an_error_that_lists_them(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"no \.gguf file in"):
        pick_gguf(str(tmp_path))
    for name in ("b.gguf", "a.gguf"):
        (tmp_path / name).write_bytes(CONTENT)
    with pytest.raises(ModelError, match=r"several \.gguf files in .* \(a\.gguf, b\.gguf\)"):
        local_model(str(tmp_path))


def test_the_worker_config_takes_a_directory(tmp_path: Path) -> None:
    (tmp_path / "m.gguf").write_bytes(CONTENT)
    config = load_config([*BASE, "--model-path", str(tmp_path)], {})
    assert config.model_path == str(tmp_path / "m.gguf")
    with pytest.raises(ConfigError, match=r"^--model-path: no such file"):
        load_config([*BASE, "--model-path", str(tmp_path / "gone.gguf")], {})


# -- the offline cache ------------------------------------------------------------------------


@pytest.mark.usefixtures("hub")
@pytest.mark.parametrize("revision", [None, "main", COMMIT])
def test_a_cached_file_resolves_offline(cache: Path, revision: str | None) -> None:
    path = fetch(HubFile(REPO, "tiny.gguf", revision), str(cache), offline=True)
    assert Path(path).read_bytes() == CONTENT
    assert path == str(cache / "models--org--models" / "snapshots" / COMMIT / "tiny.gguf")


@pytest.mark.usefixtures("hub")
def test_a_file_missing_offline_is_one_clean_line(cache: Path) -> None:
    with pytest.raises(ModelError) as caught:
        fetch(HubFile(REPO, "other.gguf"), str(cache), offline=True)
    message = str(caught.value)
    assert message == f"hf:{REPO}/other.gguf: not in {cache}, and HF_HUB_OFFLINE is set"


@pytest.mark.usefixtures("hub")
@pytest.mark.parametrize("damage", ["truncate", "flip", "append"])
def test_a_damaged_blob_is_detected(cache: Path, damage: str) -> None:
    blob = blob_of(cache)
    data = bytearray(CONTENT)
    if damage == "truncate":
        data = data[:100]
    elif damage == "flip":
        data[10] ^= 1
    else:
        data += b"\0"
    blob.write_bytes(bytes(data))
    with pytest.raises(ModelError, match=r"cached file .* is corrupt.*HF_HUB_OFFLINE is set$"):
        fetch(HubFile(REPO, "tiny.gguf"), str(cache), offline=True)


def test_blobs_named_by_git_sha1_are_checked_too(tmp_path: Path, gguf: Path) -> None:
    header = f"blob {len(CONTENT)}\0".encode()
    git_id = hashlib.sha1(header + CONTENT, usedforsecurity=False).hexdigest()
    pointer = fill_hub_cache(tmp_path, REPO, "t.gguf", gguf, blob_name=git_id, copy=True)
    assert cache_problem(str(pointer)) is None
    (tmp_path / "models--org--models" / "blobs" / git_id).write_bytes(CONTENT[:-1])
    assert "is corrupt" in (cache_problem(str(pointer)) or "")


def test_a_file_the_cache_names_by_no_digest_is_not_checked(tmp_path: Path) -> None:
    plain = tmp_path / "m.gguf"
    plain.write_bytes(b"anything")
    assert cache_problem(str(plain)) is None


@pytest.mark.usefixtures("hub")
def test_the_worker_config_fetches_from_its_cache_dir(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    argv = [*BASE, "--model-path", f"hf:{REPO}/tiny.gguf", "--model-cache-dir", str(cache)]
    config = load_config(argv, {})
    assert config.model_path is not None and Path(config.model_path).read_bytes() == CONTENT
    assert config.model_path == resolve_model_path(f"hf:{REPO}/tiny.gguf", str(cache))
    with pytest.raises(ConfigError, match=r"^--model-path: hf:org/models/no\.gguf: not in"):
        load_config([*argv, "--model-path", f"hf:{REPO}/no.gguf"], {})


@pytest.mark.usefixtures("hub")
def test_the_fetch_cli_prints_the_path_or_exits_2(
    cache: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["fetch", f"hf:{REPO}/tiny.gguf", "--cache-dir", str(cache)]) == 0
    assert Path(capsys.readouterr().out.strip()).read_bytes() == CONTENT
    with pytest.raises(SystemExit) as exited:
        main(["fetch", f"hf:{REPO}/no.gguf", "--cache-dir", str(cache)])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m worker.models: error: hf:org/models/no.gguf: not in")
    assert err.count("\n") == 1 and "Traceback" not in err


# -- the real command lines -------------------------------------------------------------------


def run_module(module: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", module, *args]
    environ = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1", **env}
    return subprocess.run(argv, env=environ, capture_output=True, text=True, timeout=60)


@pytest.mark.usefixtures("hub")
@pytest.mark.parametrize(
    ("name", "damage", "error"),
    [
        ("other.gguf", b"", r"hf:org/models/other\.gguf: not in .*, and HF_HUB_OFFLINE is set"),
        (
            "tiny.gguf",
            b"GGUF",
            r"hf:org/models/tiny\.gguf: cached file .* is corrupt .*, and HF_HUB_OFFLINE is set",
        ),
    ],
)
def test_the_worker_exits_2_with_one_line_when_the_model_is_not_there(
    cache: Path, name: str, damage: bytes, error: str
) -> None:
    if damage:
        blob_of(cache).write_bytes(damage)
    spec = f"hf:{REPO}/{name}"
    argv = [*BASE[:4], "--model-path", spec, "--model-cache-dir", str(cache)]
    ran = run_module("worker", *argv, env={})
    assert ran.returncode == 2, ran.stderr
    assert "Traceback" not in ran.stderr
    last = ran.stderr.splitlines()[-1]
    assert re.fullmatch(rf"python -m worker: error: --model-path: {error}", last), last


@pytest.mark.usefixtures("hub")
def test_the_default_cache_is_under_hf_home(tmp_path: Path, gguf: Path) -> None:
    pointer = fill_hub_cache(tmp_path / "hf" / "hub", REPO, "tiny.gguf", gguf, commit=COMMIT)
    env = {"HF_HOME": str(tmp_path / "hf")}
    ran = run_module("worker.models", "fetch", f"hf:{REPO}/tiny.gguf", env=env)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == str(pointer)


# -- downloads, from a stand-in hub -----------------------------------------------------------


@pytest.fixture
async def stand_in_hub(gguf: Path) -> AsyncIterator[tuple[str, list[str]]]:
    """The hub's resolve endpoint for `org/models` at COMMIT; records each GET's Range."""
    ranges: list[str] = []

    async def resolve(request: web.Request) -> web.StreamResponse:
        if request.match_info["file"] != "tiny.gguf":
            raise web.HTTPNotFound(headers={"X-Error-Code": "EntryNotFound"})
        content = await asyncio.to_thread(gguf.read_bytes)
        headers = {
            "X-Repo-Commit": COMMIT,
            "X-Linked-Etag": f'"{hashlib.sha256(content).hexdigest()}"',
            "X-Linked-Size": str(len(content)),
        }
        if request.method != "GET":
            return web.FileResponse(gguf, headers=headers)
        drop = ranges[-1:] == [DROP]
        ranges[-1:] = [] if drop else ranges[-1:]
        ranges.append(request.headers.get("Range", ""))
        if not drop:
            return web.FileResponse(gguf, headers=headers)
        cut = web.StreamResponse(headers=headers)
        cut.content_length = len(content)
        await cut.prepare(request)
        await cut.write(content[: len(content) // 2])
        assert request.transport is not None
        request.transport.close()
        return cut

    app = web.Application()
    app.router.add_get("/{org}/{repo}/resolve/{rev}/{file}", resolve)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/"), ranges
    finally:
        await server.close()


async def download(cache: Path, endpoint: str, name: str = "tiny.gguf") -> tuple[str, bytes]:
    """Off the loop, which serves the stand-in hub: the path fetched, and its content."""
    path = await asyncio.to_thread(fetch, HubFile(REPO, name), str(cache), endpoint=endpoint)
    return path, await asyncio.to_thread(Path(path).read_bytes)


@pytest.mark.usefixtures("hub")
async def test_a_file_is_downloaded_once_then_served_from_the_cache(
    tmp_path: Path, stand_in_hub: tuple[str, list[str]]
) -> None:
    endpoint, ranges = stand_in_hub
    cache = tmp_path / "fresh"
    path, content = await download(cache, endpoint)
    assert content == CONTENT and cache_problem(path) is None
    assert (await download(cache, endpoint))[0] == path
    assert len(ranges) == 1  # the second fetch never asked the hub


@pytest.mark.usefixtures("hub")
async def test_a_corrupt_cached_file_is_downloaded_again(
    cache: Path, stand_in_hub: tuple[str, list[str]]
) -> None:
    endpoint, ranges = stand_in_hub
    await asyncio.to_thread(blob_of(cache).write_bytes, CONTENT[:50])
    assert (await download(cache, endpoint))[1] == CONTENT
    assert ranges == [""]


@pytest.mark.usefixtures("hub")
async def test_a_broken_connection_resumes_where_it_stopped(
    tmp_path: Path, gguf: Path, stand_in_hub: tuple[str, list[str]]
) -> None:
    from huggingface_hub.constants import DOWNLOAD_CHUNK_SIZE

    # Two of the client's read chunks: it keeps the first one whole when the second breaks.
    content = bytes(range(256)) * (DOWNLOAD_CHUNK_SIZE // 128)
    await asyncio.to_thread(gguf.write_bytes, content)
    endpoint, ranges = stand_in_hub
    ranges.append(DROP)  # the stand-in hub cuts the next GET off halfway
    assert (await download(tmp_path / "fresh", endpoint))[1] == content
    assert ranges == ["", f"bytes={DOWNLOAD_CHUNK_SIZE}-"]


@pytest.mark.usefixtures("hub")
async def test_a_file_the_hub_lacks_is_a_clean_error(
    tmp_path: Path, stand_in_hub: tuple[str, list[str]]
) -> None:
    with pytest.raises(ModelError, match=r"^hf:org/models/none\.gguf: "):
        await download(tmp_path, stand_in_hub[0], "none.gguf")
