#!/usr/bin/env bash
# Build GPU binaries here, for the device machine to run without building (a build there costs
# minutes of its time): usage `scripts/pack-gpu-binaries.sh [target...]` (CMake targets; default
# fsa_tool and test_gpu_inference). Builds them for sm_90a (Hopper: H100 / H200; FSA_CUDA_ARCHITECTURES
# to change) in build/dev90, strips them and packs them with the CUDA runtime they link into
# .devbin/bins.tar.xz (git-ignored: name `.devbin` in the device call's carry). The device runs them
# through scripts/run-gpu-binaries.sh. The carry limit is 64 MiB with the working tree: one binary
# packs to about 9 MB, each further build of the same code to 1-2 MB (the dictionary, below).
#
# Two builds side by side (main and a branch, for a same-call comparison): pack one worktree's with
# FSA_PACK_PREFIX=main- (its binaries packed as main-fsa, ...), then the other's with
# FSA_PACK_KEEP=1, which keeps what .devbin/bins.tar.xz already holds.
set -euo pipefail
cd "$(dirname "$0")/.."
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(fsa_tool test_gpu_inference)
arch=${FSA_CUDA_ARCHITECTURES:-90a}
gtest=${FSA_GTEST_SOURCE_DIR:-/usr/src/googletest}
cmake -S . -B build/dev90 -DCMAKE_BUILD_TYPE=Release -DFSA_CUDA_ARCHITECTURES="$arch" \
  -DFSA_GTEST_SOURCE_DIR="$gtest" -DFSA_NATIVE_ARCH=OFF >/dev/null
cmake --build build/dev90 -j "$(nproc)" --target "${targets[@]}"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/bin" "$stage/lib"
out=$PWD/.devbin/bins.tar.xz
[[ ${FSA_PACK_KEEP:-0} == 1 && -f $out ]] && tar xJf "$out" -C "$stage"
prefix=${FSA_PACK_PREFIX:-}
for t in "${targets[@]}"; do
  # The executable a target makes: the tool is `fsa`, a test its own name under tests/cpp.
  case $t in
    fsa_tool) f=build/dev90/fsa ;;
    *) f=build/dev90/tests/cpp/$t ;;
  esac
  [[ -x $f ]] || { echo "pack-gpu-binaries: no executable for target $t at $f" >&2; exit 1; }
  cp "$f" "$stage/bin/$prefix$(basename "$f")"
  strip "$stage/bin/$prefix$(basename "$f")"
done
# The CUDA runtime the binaries load (the device machine's toolkit may be another version).
cudart=$(ldd "$stage/bin/$(ls "$stage/bin" | head -1)" | awk '/libcudart/ {print $3}')
[[ -n $cudart ]] && cp -L "$cudart" "$stage/lib/"
mkdir -p "$(dirname "$out")"
# A dictionary larger than the binaries (about 55 MB each after strip, mostly kernel images) lets xz store
# the second and later builds of the same code as references to the first: six binaries from three
# branches packed to 12 MB, where the default dictionary (8 MiB) gave about 9 MB a binary.
(cd "$stage" && tar cf - bin lib | xz -T"$(nproc)" --lzma2=preset=6,dict=384MiB) > "$out"
size=$(stat -c %s "$out")
echo "packed $(ls "$stage/bin" | tr '\n' ' ')into $out ($((size / 1048576)) MiB)"
(( size < 60 * 1048576 )) || echo "pack-gpu-binaries: over 60 MiB; the device call's carry (64 MiB with the tree) may refuse it" >&2
