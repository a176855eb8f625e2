#!/usr/bin/env bash
# On the device machine, one call for a decode change built here (scripts/pack-gpu-binaries.sh, with
# the test binaries among the targets): the GPU tests, the alternated timing, a memcheck and the
# per-kernel profile, in that order, so that a call cut short (the device's 600 s limit, a machine
# taken back) still returns what matters most. Each step's log and result lands in OUTDIR.
#
#   scripts/decode-device-call.sh OUTDIR BUILD [BUILD...]
#   e.g. FSA_COMMIT=182a332 scripts/decode-device-call.sh $OUT main main@FSA_DECODE_QUARTER_KERNEL=1
#
# A BUILD is a packed prefix, or PREFIX@VAR=VALUE[@VAR=VALUE...] (scripts/bench-decode-alternated.sh).
#   1. tests: every packed test binary of each distinct prefix (PREFIX-test_gpu_*), once, with no
#      switch set (the tests set the switches they cover themselves), each within
#      FSA_DECODE_TEST_TIMEOUT seconds (240; rc 124 past it);
#   2. timing: with FSA_DECODE_FULL_BENCH=1 first the full `fsa bench decode` of the first BUILD's
#      prefix into OUTDIR/<device>-decode.csv (the README's file: the decode shapes, dense and the
#      chunked prefill); then scripts/bench-decode-alternated.sh over every BUILD,
#      FSA_DECODE_ROUNDS rounds (2), into OUTDIR/<device>-decode-alternated-<commit>.csv;
#   3. memcheck (compute-sanitizer) of some of the first prefix's decode tests
#      (FSA_DECODE_MEMCHECK_FILTER; default the graph replay, the several-windows steps (the
#      one-launch compression), the key-quarter kernel and the merge and combination in one launch
#      with forced splits);
#   4. profile: scripts/profile-decode-kernels.sh over every BUILD (skipped with FSA_DECODE_PROFILE=0).
# A step that fails is reported and the next one still runs; the exit status is 1 if any failed.
set -uo pipefail
cd "$(dirname "$0")/.."
[[ $# -ge 2 ]] || { echo "usage: scripts/decode-device-call.sh OUTDIR BUILD [BUILD...]" >&2; exit 2; }
outdir=$1
shift
mkdir -p "$outdir"
builds=("$@")
commit=${FSA_COMMIT:-unknown}
export FSA_COMMIT=$commit
device=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
short=$(echo "$device" | grep -qi h200 && echo h200 || echo h100)
t0=$(date +%s)
failed=0
step() {  # step NAME CMD...: run, log to OUTDIR/NAME.log, report rc and elapsed time
  local name=$1
  shift
  "$@" >"$outdir/$name.log" 2>&1
  local rc=$?
  echo "$(printf '%-40s' "$name") rc=$rc at $(($(date +%s) - t0)) s"
  [[ $rc == 0 ]] || { failed=1; tail -n 15 "$outdir/$name.log"; }
}
echo "device: $device; commit $commit; builds: ${builds[*]}"
scripts/run-gpu-binaries.sh "${builds[0]%%@*}-fsa" info >/dev/null 2>&1  # unpacks the binaries

prefixes=()
for build in "${builds[@]}"; do
  prefix=${build%%@*}
  [[ " ${prefixes[*]} " == *" $prefix "* ]] || prefixes+=("$prefix")
done
for prefix in "${prefixes[@]}"; do
  for binary in .devbin/bin/"$prefix"-test_gpu_*; do
    [[ -x $binary ]] || continue
    test=${binary#.devbin/bin/}
    step "$test" timeout "${FSA_DECODE_TEST_TIMEOUT:-240}" scripts/run-gpu-binaries.sh "$test" --gtest_brief=1
    grep -E "PASSED|FAILED" "$outdir/$test.log" | head -3
  done
done

if [[ ${FSA_DECODE_FULL_BENCH:-0} == 1 ]]; then  # the README's run: bench/results/<device>-decode.csv
  step "full-bench" scripts/run-gpu-binaries.sh "${prefixes[0]}-fsa" bench decode --csv "$outdir/$short-decode.csv"
  awk -F, '!/^#/ && ($6 == "graph" || $6 ~ /prefill|nsa_forward/) {printf "  %-18s %-18s %s ms\n", $1, $6, $7}' \
    "$outdir/$short-decode.csv" 2>/dev/null
fi
step "bench" scripts/bench-decode-alternated.sh "$outdir/$short-decode-alternated-$commit.csv" \
  "${FSA_DECODE_ROUNDS:-2}" "${builds[@]}"
awk -F, '!/^#/ && $8 == "graph" {printf "  %-60s round %s  %-18s %s ms\n", $1, $2, $3, $9}' \
  "$outdir/$short-decode-alternated-$commit.csv" 2>/dev/null

filter=${FSA_DECODE_MEMCHECK_FILTER:-*GraphReplay*:*SeveralWindows*:*QuarterKernel*:*InferenceDecodeMergeCombine}
memcheck_binary=.devbin/bin/${prefixes[0]}-test_gpu_inference
if [[ -x $memcheck_binary ]]; then
  step "memcheck" env LD_LIBRARY_PATH="$PWD/.devbin/lib" compute-sanitizer --tool memcheck --error-exitcode 9 \
    "$memcheck_binary" --gtest_filter="$filter" --gtest_brief=1
fi

if [[ ${FSA_DECODE_PROFILE:-1} != 0 ]]; then
  step "profile" scripts/profile-decode-kernels.sh "$outdir/profile" "${builds[@]}"
  grep -h "^# sum" "$outdir"/profile/decode-kernels-*.txt 2>/dev/null
fi
exit $failed
