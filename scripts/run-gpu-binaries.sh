#!/usr/bin/env bash
# On the device machine: unpack .devbin/bins.tar.xz (scripts/pack-gpu-binaries.sh) and run one of
# its binaries with its arguments: `scripts/run-gpu-binaries.sh test_gpu_inference --gtest_filter=...`
# or `FSA_COMMIT=<sha> scripts/run-gpu-binaries.sh fsa bench decode --csv $OUT/decode.csv` (the
# device's tree has no .git: FSA_COMMIT names the commit in bench captions).
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $# -gt 0 ]] || { echo "usage: scripts/run-gpu-binaries.sh BINARY [ARG...]" >&2; exit 2; }
# Unpacked once, again when the archive is newer than the unpacked binaries.
if [[ ! -d .devbin/bin || .devbin/bins.tar.xz -nt .devbin/bin ]]; then
  [[ -f .devbin/bins.tar.xz ]] || { echo "run-gpu-binaries: no .devbin/bins.tar.xz (carry .devbin)" >&2; exit 2; }
  rm -rf .devbin/bin .devbin/lib
  tar xJf .devbin/bins.tar.xz -C .devbin
fi
binary=.devbin/bin/$1
shift
[[ -x $binary ]] || { echo "run-gpu-binaries: $binary not packed (have: $(ls .devbin/bin | tr '\n' ' '))" >&2; exit 2; }
LD_LIBRARY_PATH=$PWD/.devbin/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} exec "$binary" "$@"
