#!/usr/bin/env bash
# Builds fsa (CUDA kernels included when nvcc is present) and runs `fsa demo` on the embedded
# default problem: on the GPU when one is present and supported, else on the CPU reference.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
source scripts/env.sh
cmake --preset release >/dev/null
cmake --build --preset release -j "$FSA_JOBS" --target fsa_tool
./build/release/fsa demo "$@"
