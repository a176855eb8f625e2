#!/usr/bin/env bash
# On the device machine: each kernel's time in one decode step (Nsight Compute, each kernel alone,
# caches flushed), for several packed builds (scripts/pack-gpu-binaries.sh with FSA_PACK_PREFIX) and
# decode bench shapes, one table per (build, shape) in the format of
# bench/results/*-decode-kernels-*.txt (tools/ncu_kernel_table.py), printed and written under OUTDIR.
#
#   scripts/profile-decode-kernels.sh OUTDIR PREFIX [PREFIX...]
#   e.g. FSA_COMMIT=c3256e9 scripts/profile-decode-kernels.sh $OUT main nf
#
# A PREFIX may be PREFIX@VAR=VALUE[@VAR=VALUE...], as in scripts/bench-decode-alternated.sh: that
# build profiled with those switches set (main@FSA_DECODE_QUARTER_KERNEL=1); its tables carry the
# whole name.
#
# FSA_DECODE_CONFIGS: the shapes (fsa bench decode --config names; default the 16 x 128K G 16 and
# 64 x 32K G 4 steps at q_len 1). FSA_COMMIT names the commit in the titles.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $# -ge 2 ]] || { echo "usage: scripts/profile-decode-kernels.sh OUTDIR PREFIX [PREFIX...]" >&2; exit 2; }
outdir=$1
shift
mkdir -p "$outdir"
configs=${FSA_DECODE_CONFIGS:-D16x128K-G16-Q1 D64x32K-G4-Q1}
# A step is at most 17 launches (16, and the key-quarter kernel's); more than a step shows where the
# next one starts (--step cuts there).
scripts/run-gpu-binaries.sh "${1%%@*}-fsa" info > /dev/null  # unpacks the binaries
for build in "$@"; do
  prefix=${build%%@*} setting=()
  [[ $build == *@*=* ]] && IFS=@ read -ra setting <<< "${build#*@}"
  name=${build//[@=]/-}  # file names without @ and = (the device's copy-back refuses odd names)
  for config in $configs; do
    raw=$outdir/ncu-$name-$config.csv
    env "${setting[@]}" LD_LIBRARY_PATH=$PWD/.devbin/lib ncu --clock-control none \
      --metrics gpu__time_duration.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed,launch__grid_size \
      --launch-count 19 --csv ".devbin/bin/$prefix-fsa" bench decode --config "$config" --iters 1 > "$raw" 2>&1 ||
      { echo "profile-decode-kernels: ncu failed for $build $config:" >&2; tail -5 "$raw" >&2; exit 1; }
    python3 tools/ncu_kernel_table.py "$raw" --step -o "$outdir/decode-kernels-$name-$config.txt" \
      --title "Per-kernel GPU time of one eager decode step at $config (fsa bench decode --config $config --iters 1)" \
      --title "ncu --clock-control none, each kernel alone with caches flushed; $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1); build $build, commit ${FSA_COMMIT:-unknown}; $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "== $build $config"
    cat "$outdir/decode-kernels-$name-$config.txt"
  done
done
