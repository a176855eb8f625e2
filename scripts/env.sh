# Sourced by the scripts: finds nvcc where the CUDA toolkit puts it when it is not on PATH.
if ! command -v nvcc >/dev/null 2>&1 && [[ -x /usr/local/cuda/bin/nvcc ]]; then
  export CUDACXX=/usr/local/cuda/bin/nvcc
fi
FSA_JOBS=${FSA_JOBS:-$(nproc)}
