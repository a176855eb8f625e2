#!/usr/bin/env bash
# Times the CPU reference on its benchmark problem (N=8192 in one sequence, Hkv=2, G=4,
# D=128, bf16 inputs, default hyperparameters): the full layer forward and backward must finish in
# under 30 s on a 2-core machine. Writes bench/results/cpu-reference.csv and regenerates the
# README tables.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
cmake --preset release >/dev/null
cmake --build --preset release -j "$FSA_JOBS" --target fsa_tool
tmp=$(mktemp)
./build/release/fsa demo --device cpu --seqlens 8192 --heads-q 8 --heads-kv 2 --head-dim 128 --csv "$tmp"
commit=$(git rev-parse --short HEAD)
cpu=$(grep -m1 "model name" /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//; s/,/ /g')
{
  echo "# CPU reference, fsa demo --device cpu --seqlens 8192 --heads-q 8 --heads-kv 2 --head-dim 128"
  echo "# machine: $cpu, $(nproc) cores; commit $commit; $(date -u +%Y-%m-%d)"
  grep -v '^#' "$tmp"
} > bench/results/cpu-reference.csv
rm -f "$tmp"
python3 tools/update_readme.py
