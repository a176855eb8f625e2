#!/usr/bin/env bash
# The device machine's one call: build with all cores for the local GPU, run the GPU tests (and
# the CPU ones, which are cheap there), a compute-sanitizer memcheck of the GPU tests, the demo and
# (with FSA_GPU_CHECK_BENCH=1) the benchmarks; print a short table last. Logs go to
# build/gpu-check; when $OUT is set (the device tool), they are packed into $OUT/gpu-check.tgz
# with the benchmark CSVs next to it, since only a few files come back from a call.
#
# GoogleTest is not installed on the device machine: carry a copy of its sources in .gtest/
# (`cp -r /usr/src/googletest .gtest` here; .gtest/ is git-ignored) and name it in `carry`.
set -uo pipefail
cd "$(dirname "$0")/.."
out=build/gpu-check
mkdir -p "$out"
arch=${FSA_CUDA_ARCHITECTURES:-90a}
targets=${FSA_GPU_CHECK_TARGETS:-all}
status=()

# FSA_GPU_CHECK_SKIP: a comma list of step names not to run (e.g. gpu-tests-mma-sync,memcheck-slc):
# the whole check with the benchmarks takes more than one 600 s device call, so a call can run the
# tests and the next the benchmarks (FSA_GPU_CHECK_SKIP=gpu-tests,gpu-tests-mma-sync,...).
run() {  # run NAME CMD...: log to $out/NAME.log, remember pass/fail
  local name=$1
  shift
  if [[ ,${FSA_GPU_CHECK_SKIP:-}, == *,$name,* ]]; then
    status+=("$(printf '%-22s %-5s' "$name" skip)")
    return 0
  fi
  local t0=$(date +%s%N)
  "$@" >"$out/$name.log" 2>&1
  local rc=$?
  local ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  status+=("$(printf '%-22s %-5s %6d.%03d s' "$name" "$([[ $rc == 0 ]] && echo ok || echo FAIL)" $((ms / 1000)) $((ms % 1000)))")
  tail -n 25 "$out/$name.log"
  return $rc
}

gtest_dir=$PWD/.gtest
[[ -f $gtest_dir/CMakeLists.txt ]] || gtest_dir=/usr/src/googletest
run configure cmake -S . -B build/gpu -DCMAKE_BUILD_TYPE=Release -DFSA_CUDA_ARCHITECTURES="$arch" \
  -DFSA_GTEST_SOURCE_DIR="$gtest_dir" -DFSA_NATIVE_ARCH=ON
if [[ $targets == all ]]; then
  run build cmake --build build/gpu -j "$(nproc)"
else
  run build cmake --build build/gpu -j "$(nproc)" --target $targets
fi
run fsa-info ./build/gpu/fsa info
run gpu-tests ctest --test-dir build/gpu -L gpu --output-on-failure -j 1
# On Hopper the flash-attention kernels, the selection and the selected-attention backward run their
# wgmma variants; FSA_DISABLE_WGMMA=1 runs the tests of their users again on the mma.sync kernels
# (the ones sm80 runs), so both stay tested on this machine.
run gpu-tests-mma-sync env FSA_DISABLE_WGMMA=1 ctest --test-dir build/gpu -L gpu --output-on-failure -j 1 \
  -R "Gpu\.(Swa|CmpAttn|Layer|Select|KernelSet)"
run cpu-tests ctest --test-dir build/gpu -L cpu --output-on-failure -j "$(nproc)"
run memcheck compute-sanitizer --tool memcheck --error-exitcode 1 build/gpu/tests/cpp/test_gpu_runtime
run memcheck-slc compute-sanitizer --tool memcheck --error-exitcode 1 build/gpu/tests/cpp/test_gpu_slc_attn \
  --gtest_filter='*GroupSizes*:*EveryLength*'
run memcheck-plan compute-sanitizer --tool memcheck --error-exitcode 1 build/gpu/tests/cpp/test_gpu_slc_plan \
  --gtest_filter='*HandWritten*:*EmptyShapes*'
run memcheck-layer compute-sanitizer --tool memcheck --error-exitcode 1 build/gpu/tests/cpp/test_gpu_layer \
  --gtest_filter='*HeadDims64And256*'
run memcheck-inference compute-sanitizer --tool memcheck --error-exitcode 1 \
  build/gpu/tests/cpp/test_gpu_inference --gtest_filter='*GroupSizes*:*DropsRejected*:*ChunkedPrefill*'
run memcheck-combine compute-sanitizer --tool memcheck --error-exitcode 1 build/gpu/tests/cpp/test_gpu_combine
run memcheck-decode-scores compute-sanitizer --tool memcheck --error-exitcode 1 build/gpu/tests/cpp/test_gpu_decode_scores
run demo ./build/gpu/fsa demo
# FSA_GPU_CHECK_PYTHON=1: the extension built against the machine's torch (with the kernels for
# the local GPU) and the whole Python suite, GPU tests included (a copy of the tests and examples
# runs from /tmp so that `import fsa` finds the installed package, not ./python).
if [[ -n ${FSA_GPU_CHECK_PYTHON:-} ]]; then
  run python-build env CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" python3 -m pip install -q --no-build-isolation \
    --no-deps -C cmake.define.FSA_CUDA_ARCHITECTURES="$arch" -C build-dir=build/py-gpu .
  rm -rf /tmp/fsa-run && mkdir -p /tmp/fsa-run/tests && cp -r tests/python /tmp/fsa-run/tests/ && cp -r examples /tmp/fsa-run/
  # FSA_PYTEST_ARGS: which tests (default all), e.g. "test_gpu.py test_tiny_lm.py".
  run python-tests bash -c "cd /tmp/fsa-run/tests/python && python3 -m pytest -q -ra -p no:cacheprovider \
    ${FSA_PYTEST_ARGS:-.}"
fi
# FSA_GPU_CHECK_BENCH=1 runs every bench; a comma list (selected,compressed,layer,decode) picks some.
# The decode bench names FSA_COMMIT in its CSV caption (the device's copy of the tree has no .git:
# pass FSA_COMMIT=<sha> there).
bench_on() { [[ ${FSA_GPU_CHECK_BENCH:-} == 1 || ,${FSA_GPU_CHECK_BENCH:-}, == *,$1,* ]]; }
# shellcheck disable=SC2086  # the *_ARGS variables hold several options
if bench_on selected; then
  run bench-selected ./build/gpu/fsa bench selected --csv "$out/bench-selected.csv" ${FSA_BENCH_ARGS:-}
fi
if bench_on compressed; then
  run bench-compressed ./build/gpu/fsa bench compressed --csv "$out/bench-compressed.csv" \
    ${FSA_BENCH_COMPRESSED_ARGS:-}
fi
if bench_on layer; then
  run bench-layer ./build/gpu/fsa bench layer --csv "$out/bench-layer.csv" ${FSA_BENCH_LAYER_ARGS:-}
  # Dense causal attention of torch SDPA on the same shapes, appended to the layer CSV (fails
  # harmlessly when torch is missing).
  run bench-sdpa python3 bench/sdpa_dense.py --csv "$out/bench-layer.csv" ${FSA_BENCH_SDPA_ARGS:-}
fi
if bench_on decode; then
  run bench-decode ./build/gpu/fsa bench decode --csv "$out/bench-decode.csv" ${FSA_BENCH_DECODE_ARGS:-}
fi
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv >"$out/gpu.csv" 2>&1

echo
echo "== gpu-check: commit ${FSA_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo '?')} on $(head -2 "$out/gpu.csv" | tail -1)"
printf '%s\n' "${status[@]}"
grep -E "tests passed|tests failed" "$out"/gpu-tests.log "$out"/cpu-tests.log
if [[ -n ${OUT:-} ]]; then
  tar czf "$OUT/gpu-check.tgz" -C build gpu-check
  cp "$out"/bench-*.csv "$OUT"/ 2>/dev/null || true
fi
