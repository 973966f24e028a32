"""Where a worker's GGUF comes from: a file, a directory on a volume, or the Hugging Face hub.

`--model-path` takes a file, a directory holding exactly one `.gguf`, `pkg:<package>/<file>`
(worker.config) or `hf:ORG/REPO/FILE.gguf[@REVISION]`. A hub file is fetched with
`huggingface_hub` (the optional extra `hub`) into its cache: `--model-cache-dir`, else the hub's
default (HF_HUB_CACHE, or HF_HOME/hub). The cache is tried first without the network; only a file
missing from it, or a corrupt one, is downloaded; a connection that breaks mid-file is resumed
where it stopped (HTTP Range, huggingface_hub's retries). huggingface_hub 2.x downloads into a
file private to the process, so a killed process starts that file over. With HF_HUB_OFFLINE=1
the network is never tried, and a file not cached is a one-line error.

Every fetched file is checked against the digest the cache names it by: the hub stores a file
under `blobs/<sha256>` (git LFS) or `blobs/<git sha1>`, and `hf_hub_download` returns a cached
blob without reading it, so a truncated or corrupted blob would otherwise load (or crash llama.cpp)
on every start. Hashing runs at disk speed, about a second per GB.

This runs while the configuration is resolved, before the worker's event loop starts: a download
of gigabytes never runs inside the loop, and a worker that cannot get its model exits 2 before it
listens or registers. A deployment fills a model volume once with the CLI below (an init
container) and starts workers offline from it:

    python -m worker.models fetch hf:ORG/REPO/FILE.gguf [--cache-dir DIR]   # prints the path
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

HF_PREFIX = "hf:"
GGUF_SUFFIX = ".gguf"
HF_SPEC_FORM = "hf:ORG/REPO/FILE.gguf[@REVISION]"
_SHA256 = re.compile(r"[0-9a-f]{64}")
_GIT_SHA1 = re.compile(r"[0-9a-f]{40}")
_TRUE = frozenset({"1", "on", "yes", "true"})


class ModelError(ValueError):
    """The model cannot be found, fetched or trusted; the message is meant for the user."""


@dataclass(frozen=True, slots=True)
class HubFile:
    """One file of a hub model repository, at a revision (a branch, tag or commit; None: main)."""

    repo_id: str
    filename: str
    revision: str | None = None

    @classmethod
    def parse(cls, spec: str) -> HubFile:
        if not spec.startswith(HF_PREFIX):
            raise ModelError(f"expected {HF_SPEC_FORM}, got {spec!r}")
        rest, at, revision = spec[len(HF_PREFIX) :].partition("@")
        org, _, tail = rest.partition("/")
        repo, _, filename = tail.partition("/")
        parts_ok = all(p and p not in (".", "..") for p in (org, repo, *filename.split("/")))
        if not parts_ok or not filename.endswith(GGUF_SUFFIX) or (at and not revision):
            raise ModelError(f"expected {HF_SPEC_FORM}, got {spec!r}")
        return cls(f"{org}/{repo}", filename, revision or None)

    def __str__(self) -> str:
        revision = f"@{self.revision}" if self.revision else ""
        return f"{HF_PREFIX}{self.repo_id}/{self.filename}{revision}"


def is_hub_spec(spec: str) -> bool:
    return spec.startswith(HF_PREFIX)


def pick_gguf(directory: str) -> str:
    """The only `.gguf` file directly inside `directory`; none or several is an error."""
    found = sorted(
        entry.name
        for entry in os.scandir(directory)
        if entry.name.endswith(GGUF_SUFFIX) and entry.is_file()
    )
    if not found:
        raise ModelError(f"no {GGUF_SUFFIX} file in {directory}")
    if len(found) > 1:
        raise ModelError(
            f"several {GGUF_SUFFIX} files in {directory} ({', '.join(found)}): name one of them"
        )
    return os.path.join(directory, found[0])


def local_model(path: str) -> str:
    """`path` (a file, or a directory holding one GGUF) as an absolute file path."""
    path = os.path.expanduser(path)
    if os.path.isdir(path):
        path = pick_gguf(path)
    if not os.path.isfile(path):
        raise ModelError(f"no such file: {path}")
    return os.path.abspath(path)


def offline(environ: Mapping[str, str]) -> bool:
    """HF_HUB_OFFLINE as huggingface_hub reads it (which it does only once, at import)."""
    return environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def cache_problem(path: str) -> str | None:
    """Why the cached file at `path` cannot be trusted, or None when its content matches the
    digest its blob is named by (or when the cache names it by none: a copy, not a link)."""
    pointer = Path(path)
    if not pointer.is_symlink():
        return None
    # One hop only: the blob itself may be a link to a file named otherwise.
    blob = Path(os.path.normpath(pointer.parent / os.readlink(pointer)))
    if blob.parent.name != "blobs":
        return None
    if _SHA256.fullmatch(blob.name):
        digest = _file_digest(blob, hashlib.sha256())
    elif _GIT_SHA1.fullmatch(blob.name):
        # A file stored in git itself: named by its git blob id.
        header = f"blob {blob.stat().st_size}\0".encode()
        digest = _file_digest(blob, hashlib.sha1(header, usedforsecurity=False))
    else:
        return None
    if digest == blob.name:
        return None
    return f"cached file {blob} is corrupt (content hashes to {digest[:12]}..., not its name)"


def _file_digest(path: Path, hasher: hashlib._Hash) -> str:
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            hasher.update(chunk)
    return hasher.hexdigest()


def fetch(
    hub: HubFile,
    cache_dir: str | None = None,
    *,
    offline: bool = False,
    endpoint: str | None = None,
) -> str:
    """The verified local path of `hub`'s file: from the cache, else downloaded into it."""
    try:
        from huggingface_hub.errors import EntryNotFoundError
    except ImportError:
        raise ModelError(
            f"{hub}: hub models need huggingface_hub (pip install 'xero-router[hub]')"
        ) from None
    try:
        path = _download(hub, cache_dir, local_files_only=True)
    except EntryNotFoundError:
        path = None
    except (OSError, ValueError) as exc:
        raise ModelError(f"{hub}: {_first_line(exc)}") from None
    problem = None if path is None else cache_problem(path)
    if path is not None and problem is None:
        return path
    if offline:
        where = cache_dir or "the default hub cache"
        raise ModelError(f"{hub}: {problem or f'not in {where}'}, and HF_HUB_OFFLINE is set")
    if problem is not None:
        logger.warning("%s; downloading it again", problem)
    try:
        path = _download(hub, cache_dir, force_download=problem is not None, endpoint=endpoint)
    except Exception as exc:
        # OSError, ValueError, the hub's own errors and its HTTP client's (httpx2 in
        # huggingface_hub 2.x): whichever, the user gets one line, not a traceback.
        raise ModelError(f"{hub}: {_first_line(exc)}") from None
    problem = cache_problem(path)
    if problem is not None:
        raise ModelError(f"{hub}: {problem} after downloading it")
    return path


def _download(
    hub: HubFile,
    cache_dir: str | None,
    *,
    local_files_only: bool = False,
    force_download: bool = False,
    endpoint: str | None = None,
) -> str:
    from huggingface_hub import hf_hub_download

    return hf_hub_download(
        hub.repo_id,
        hub.filename,
        revision=hub.revision,
        cache_dir=cache_dir,
        local_files_only=local_files_only,
        force_download=force_download,
        endpoint=endpoint,
    )


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """`fetch SPEC [--cache-dir DIR]`: fill a model volume; prints the file's path."""
    parser = argparse.ArgumentParser(
        prog="python -m worker.models",
        description="Fetch a hub model into a cache directory (an init container fills a "
        "model volume with it); HF_TOKEN, HF_ENDPOINT and HF_HUB_OFFLINE are honoured.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    fetch_cmd = commands.add_parser("fetch", help="download (or verify) one GGUF of the hub")
    fetch_cmd.add_argument("spec", metavar="SPEC", help=HF_SPEC_FORM)
    fetch_cmd.add_argument("--cache-dir", default=None, help="default: the hub's own cache")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        path = fetch(HubFile.parse(args.spec), args.cache_dir, offline=offline(os.environ))
    except ModelError as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
