#!/usr/bin/env bash
# Builds everything (library, CUDA kernels when nvcc is present, tool, tests) and runs every test
# that needs no GPU (CTest label `cpu`). Pass `gpu` to run the GPU tests instead, `all` for both.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
source scripts/env.sh
label=${1:-cpu}
cmake --preset release >/dev/null
cmake --build --preset release -j "$FSA_JOBS"
./build/release/fsa --help >/dev/null
case "$label" in
  cpu|gpu) ctest --test-dir build/release -L "$label" --output-on-failure -j "$FSA_JOBS" ;;
  all) ctest --test-dir build/release --output-on-failure -j "$FSA_JOBS" ;;
  *) echo "usage: scripts/test.sh [cpu|gpu|all]" >&2; exit 2 ;;
esac
