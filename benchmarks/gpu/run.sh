#!/usr/bin/env bash
# Runs ON the GPU machine, from the repo root, with .gpu/ carried (benchmarks/gpu/make_carry.sh):
# builds llama-cpp-python 0.3.36 with CUDA into /tmp/site (~4 min), then measures with every
# layer on the GPU (same-shape SmolLM2-135M): the bare loop (split and unified KV), the single-
# sequence and the batched engine at concurrency 1,4,8,16 (benchmarks/batched/), and the
# batched engine with a unified KV cache. Results (JSON, Markdown, logs) go to $OUT.
#   GIT_REV=<rev> bash benchmarks/gpu/run.sh       # on the GPU machine: ~4 min build + ~2 min
#   bash benchmarks/gpu/run.sh --dry-run-cpu       # here: no build, CPU, small sizes
# Build and measurement stay in ONE call: a machine left idle goes back, and a new one is bare.
set -u
out=${OUT:-/tmp/gpu-out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
site=/tmp/site
ngl=99 threads=8 conc=1,4,8,16 tokens=128 rounds=2 gen=128 build=1
if [ "${1:-}" = "--dry-run-cpu" ]; then
  ngl=0 threads=2 conc=1,4 tokens=16 rounds=1 gen=16 build=0 site=/tmp/site-dry-run
fi
started=$(date +%s)
elapsed() { echo "[$(( $(date +%s) - started )) s] $*"; }

# Only what the box lacks: its own numpy, jinja2 etc. win when present.
for pair in diskcache:diskcache orjson:orjson jinja2:jinja2 markupsafe:markupsafe \
            typing_extensions:typing_extensions numpy:numpy; do
  module=${pair%%:*} wheel=${pair##*:}
  if ! python3 -c "import $module" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --target "$site" .gpu/wheels/"$wheel"-*.whl \
      && elapsed "installed $wheel"
  fi
done
export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
python3 -c "import lzma, shutil; shutil.copyfileobj(lzma.open('.gpu/same-shape.gguf.xz'), open('/tmp/m.gguf', 'wb'))"

if [ "$build" = 1 ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  tar -xzf .gpu/lcp-src.tar.gz -C /tmp
  ( cd /tmp/llama_cpp_python-0.3.36 && \
    CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAVA_BUILD=OFF -DGGML_CUDA_NCCL=OFF" \
    CMAKE_BUILD_PARALLEL_LEVEL=16 timeout 400 python3 -m pip install -q --no-build-isolation \
    --no-deps --no-index --target "$site" . ) > "$out/cuda-build.log" 2>&1 \
    || { elapsed "CUDA build failed; tail of cuda-build.log:"; tail -30 "$out/cuda-build.log"; exit 1; }
  elapsed "CUDA build done"
fi
python3 -c "import llama_cpp, sys; print('llama_cpp', llama_cpp.__version__, 'gpu offload', llama_cpp.llama_supports_gpu_offload(), 'python', sys.version.split()[0])"

step() {  # step NAME TIMEOUT_S COMMAND...: run, log to $OUT/NAME.log, show the tail
  local name=$1 limit=$2; shift 2
  elapsed "$name"
  timeout "$limit" "$@" > "$out/$name.log" 2>&1
  local rc=$?
  tail -n 25 "$out/$name.log"
  [ $rc = 0 ] || elapsed "$name exited with $rc"
}
model=/tmp/m.gguf
step bare_split 45 python3 -m benchmarks.bare_loop --model $model --n-gpu-layers $ngl \
  --threads $threads --seqs $conc,32 --n-gen $gen
step bare_unified 45 python3 -m benchmarks.bare_loop --model $model --n-gpu-layers $ngl \
  --threads $threads --seqs $conc,32 --n-gen $gen --unified
step engines 150 python3 -m benchmarks.batched --model $model --n-gpu-layers $ngl \
  --threads $threads --concurrency $conc --max-tokens $tokens --rounds $rounds --out "$out" \
  --label gpu ${GIT_REV:+--git-rev "$GIT_REV"}
step engines_unified 75 python3 -m benchmarks.batched --model $model --n-gpu-layers $ngl \
  --threads $threads --concurrency $conc --max-tokens $tokens --rounds $rounds --out "$out" \
  --label gpu_unified --kv-unified --engines batched --no-bare ${GIT_REV:+--git-rev "$GIT_REV"}
elapsed "done; results in $out"
