#include "kernels/varlen/shift_cu_seqlens.hpp"

#include <algorithm>

#include "cuda/runtime.hpp"

namespace fsa::cuda {

namespace {

constexpr int kThreads = 256;

__global__ void __launch_bounds__(kThreads)
    shift_cu_seqlens_kernel(const std::int32_t* cu, std::int64_t cu_stride, int num_seqs, std::int32_t first_token,
                            std::int32_t* out) {
  for (int b = static_cast<int>(blockIdx.x) * kThreads + static_cast<int>(threadIdx.x); b <= num_seqs;
       b += static_cast<int>(gridDim.x) * kThreads)
    out[b] = cu[b * cu_stride] - first_token;
}

}  // namespace

Status shift_cu_seqlens(const std::int32_t* cu, std::int64_t cu_stride, int num_seqs, std::int64_t first_token,
                        std::int32_t* out, cudaStream_t stream) {
  // cu values and first_token lie in [0, N] with N <= INT32_MAX, so the difference fits int32.
  const int ctas = static_cast<int>(std::min<std::int64_t>((num_seqs + kThreads) / kThreads, 1024));
  shift_cu_seqlens_kernel<<<ctas, kThreads, 0, stream>>>(cu, cu_stride, num_seqs,
                                                         static_cast<std::int32_t>(first_token), out);
  FSA_CHECK_LAUNCH("shift_cu_seqlens_kernel", stream);
  return Status::ok();
}

}  // namespace fsa::cuda
