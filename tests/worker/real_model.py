"""The real model the llama tests load (tests.processes.MODEL_PATH), resolved once per module."""

from __future__ import annotations

import pytest

from tests.processes import MODEL_PATH
from worker.config import ConfigError, resolve_model_path


def real_model_path() -> str:
    """The GGUF's path; skips the calling module when the model package is not installed."""
    try:
        return resolve_model_path(MODEL_PATH)
    except ConfigError:
        pytest.skip("the SmolLM2 model package is not installed", allow_module_level=True)
