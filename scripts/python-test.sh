#!/usr/bin/env bash
# Builds the Python package (the PyTorch extension, with the CUDA kernels when nvcc is present) and
# runs its tests (tests/python; the GPU tests skip without a device).
#
# torch comes from PyPI into a virtual environment (build/py-venv, reused by later runs). On Linux
# x86_64 PyPI serves only the default torch wheel, a CUDA build (~1 GB, plus ~3 GB of nvidia-*
# wheels; 5.3 GB installed); it runs on machines without a GPU. The CPU-only wheels live on
# download.pytorch.org, which CI cannot reach. Set FSA_TORCH_INDEX_URL to use such an index.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
source scripts/env.sh
start=$(date +%s)
venv=${FSA_PY_VENV:-build/py-venv}
python=${PYTHON:-python3}
if ! "$python" -c "import venv, ensurepip" 2>/dev/null; then
  SUDO=""
  [[ $(id -u) -eq 0 ]] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv python3-pip
fi
[[ -x $venv/bin/python ]] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip)
# No wheel cache: the venv is what later runs reuse, and a cached copy of torch's ~4 GB of wheels
# would double the disk this step needs.
export PIP_NO_CACHE_DIR=${PIP_NO_CACHE_DIR:-1}
if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
  # A first install needs about 9 GB free (5.3 GB installed plus the downloaded wheels until pip
  # exits); say so plainly instead of failing later with pip's "No space left on device".
  free_kb=$(df -Pk "$venv" | awk 'NR == 2 { print $4 }')
  if ((free_kb < 9 * 1024 * 1024)); then
    echo "python-test.sh: installing torch needs about 9 GB free on $(df -P "$venv" | awk 'NR == 2 { print $6 }'); $((free_kb / 1024)) MB are" >&2
  fi
fi
index=()
[[ -n ${FSA_TORCH_INDEX_URL:-} ]] && index=(--index-url "$FSA_TORCH_INDEX_URL" --extra-index-url https://pypi.org/simple)
# numpy: torch imports it when present and warns on every import when it is not.
"${pip[@]}" install -q "${index[@]}" "torch>=2.4" "pytest>=7" "scikit-build-core>=0.10" ninja numpy
echo "torch ready in $(( $(date +%s) - start )) s"
# --no-build-isolation: compile against the torch just installed (an extension is tied to the
# torch version it was built with) instead of downloading a second torch into a build environment.
export CMAKE_BUILD_PARALLEL_LEVEL=$FSA_JOBS
# FSA_PIP_ARGS: extra pip options, e.g. "-C cmake.define.FSA_ENABLE_CUDA=OFF" for a CPU-only build.
# The build takes minutes: its whole output goes to a log and its progress lines ([n/total] and the
# file) to the terminal; on failure the log's tail is printed.
log=build/py-build.log
echo "building the extension (full output in $log)"
# shellcheck disable=SC2086  # the variable holds several options
if ! "${pip[@]}" install -v --no-build-isolation ${FSA_PIP_ARGS:-} . 2>&1 | tee "$log" |
  awk '/^ *\[[0-9]+\/[0-9]+\]/ { print "  " $1 " " $NF; fflush() }'; then
  tail -n 40 "$log"
  echo "python-test.sh: building the extension failed (full output in $log)" >&2
  exit 1
fi
echo "package built in $(( $(date +%s) - start )) s"
"$venv/bin/python" -m pytest tests/python -q -ra "$@"
echo "python tests finished in $(( $(date +%s) - start )) s"
