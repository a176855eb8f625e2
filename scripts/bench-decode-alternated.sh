#!/usr/bin/env bash
# On the device machine: the decode bench's five target shapes for several packed builds
# (scripts/pack-gpu-binaries.sh with FSA_PACK_PREFIX, e.g. main- and a branch's), alternated build
# by build for ROUNDS rounds, so that a clock or thermal drift hits every build alike. Writes one CSV
# (`build,round,` then the bench's columns, under the first run's caption) and prints the graph
# replay times.
#
#   scripts/bench-decode-alternated.sh OUT.csv ROUNDS BUILD [BUILD...]
#   e.g. scripts/bench-decode-alternated.sh $OUT/h100-decode-alternated.csv 2 main fl
#
# A BUILD is a prefix, or PREFIX@VAR=VALUE[@VAR=VALUE...] to run that build with environment
# switches set (routes the library keeps behind a switch, e.g. main@FSA_DECODE_QUARTER_KERNEL=1 or
# main@FSA_DECODE_QUARTER_KERNEL=1@FSA_DECODE_ATTN_SPLITS=3); its rows carry the whole name.
#
# FSA_COMMIT names the commit in the caption (the device's tree has no .git); each build's rows
# carry its prefix. FSA_DECODE_CONFIGS replaces the shapes (fsa bench decode --config names).
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $# -ge 3 ]] || { echo "usage: scripts/bench-decode-alternated.sh OUT.csv ROUNDS PREFIX [PREFIX...]" >&2; exit 2; }
out=$1 rounds=$2
shift 2
[[ $rounds =~ ^[1-9][0-9]*$ ]] || { echo "bench-decode-alternated: ROUNDS must be a positive integer, got '$rounds'" >&2; exit 2; }
configs=${FSA_DECODE_CONFIGS:-D16x128K-G16-Q1 D16x128K-G16-Q4 D64x32K-G4-Q1 D64x32K-G4-Q4 D1x128K-G4-Q1}
args=()
for c in $configs; do args+=(--config "$c"); done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
: > "$out"
for ((round = 1; round <= rounds; ++round)); do
  for build in "$@"; do
    prefix=${build%%@*} setting=()
    [[ $build == *@*=* ]] && IFS=@ read -ra setting <<< "${build#*@}"
    csv=$tmp/run-$round.csv
    env "${setting[@]}" scripts/run-gpu-binaries.sh "$prefix-fsa" bench decode "${args[@]}" --csv "$csv" > "$tmp/log" 2>&1 ||
      { echo "bench-decode-alternated: $build failed (round $round):" >&2; tail -5 "$tmp/log" >&2; exit 1; }
    if [[ ! -s $out ]]; then  # the first run's caption, then the header with the build and round
      grep '^#' "$csv" >> "$out"
      echo "build,round,$(grep -v '^#' "$csv" | head -1)" >> "$out"
    fi
    grep -v '^#' "$csv" | tail -n +2 | sed "s/^/$build,$round,/" >> "$out"
  done
done
awk -F, '!/^#/ && $8 == "graph" {printf "%-36s round %s  %-18s %s ms\n", $1, $2, $3, $9}' "$out"
