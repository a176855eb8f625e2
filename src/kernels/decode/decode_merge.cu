// The merge of an attention branch that ran in several splits (decode_attn_kernel.cuh): per query
// row (token, head), the splits' unnormalised outputs and row statistics combined by the
// log-sum-exp rule in split order (deterministic, no atomics):
//   M = max_s m_s,  L = sum_s l_s 2^(m_s - M),  o = sum_s o_s 2^(m_s - M) / L,  lse = M ln 2 + ln L,
// over the splits that saw a key (l_s > 0); a row no split saw gets o = 0 and lse = -inf. One warp
// per row, lanes over the output columns.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>

#include "cuda/runtime.hpp"
#include "kernels/common/convert.cuh"
#include "kernels/common/launch_checks.hpp"
#include "kernels/common/mma_sm80.cuh"
#include "kernels/decode/decode.hpp"

namespace fsa::cuda::decode {

namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

// blockIdx.y: the launched branch; warps over the N x Hq rows.
template <class Element>
__global__ void __launch_bounds__(kThreads) merge_splits_kernel(const __grid_constant__ AttnParams p, int dim_v) {
  const Branch branch = p.launch_branch[blockIdx.y];
  const BranchOutput& out = p.out[static_cast<int>(branch)];
  if (out.splits <= 1) return;  // written by the attention kernel
  const int lane = threadIdx.x % 32;
  const long long rows = p.batch.tokens * p.nsa.heads_q;
  const long long valid_tokens = p.batch.cu_seqlens[p.batch.num_seqs * p.batch.cu_stride];
  const long long warps = static_cast<long long>(gridDim.x) * kWarps;
  for (long long row = static_cast<long long>(blockIdx.x) * kWarps + threadIdx.x / 32; row < rows; row += warps) {
    const long long token = row / p.nsa.heads_q;
    const int head = static_cast<int>(row % p.nsa.heads_q);
    if (token >= valid_tokens) continue;  // rows past the batch have no partials
    float max_log2 = -INFINITY;
    for (int s = 0; s < out.splits; ++s) {
      const RowStats st = out.stats[s * rows + row];
      if (st.sum > 0.0f) max_log2 = fmaxf(max_log2, st.max_log2);
    }
    float sum = 0.0f;
    for (int s = 0; s < out.splits; ++s) {
      const RowStats st = out.stats[s * rows + row];
      if (st.sum > 0.0f) sum += st.sum * exp2f(st.max_log2 - max_log2);
    }
    const float inv_sum = sum > 0.0f ? 1.0f / sum : 0.0f;
    Element* o = static_cast<Element*>(out.o) + token * out.o_token_stride + head * out.o_head_stride;
    for (int col = 2 * lane; col < dim_v; col += 64) {
      float2 value = make_float2(0.0f, 0.0f);
      for (int s = 0; s < out.splits; ++s) {
        const RowStats st = out.stats[s * rows + row];
        if (!(st.sum > 0.0f)) continue;
        const float weight = exp2f(st.max_log2 - max_log2) * inv_sum;
        const float2 part = *reinterpret_cast<const float2*>(out.o_part + (s * rows + row) * dim_v + col);
        value.x += part.x * weight;
        value.y += part.y * weight;
      }
      *reinterpret_cast<std::uint32_t*>(o + col) = mma::pack2<Element>(value.x, value.y);
    }
    if (out.lse != nullptr && lane == 0)
      out.lse[head * out.lse_head_stride + token * out.lse_token_stride] =
          sum > 0.0f ? max_log2 * 0.69314718055994531f + logf(sum) : -INFINITY;
  }
}

}  // namespace

Status launch_merge_splits(const AttnParams& p, DType dtype, int dim_v, cudaStream_t stream) {
  bool any = false;
  for (int i = 0; i < p.num_launch_branches; ++i) any = any || p.out[static_cast<int>(p.launch_branch[i])].splits > 1;
  const long long rows = p.batch.tokens * p.nsa.heads_q;
  if (!any || rows == 0 || p.batch.num_seqs == 0) return Status::ok();
  const long long ctas = (rows + kWarps - 1) / kWarps;
  const unsigned grid = static_cast<unsigned>(ctas < 132LL * 16 ? ctas : 132LL * 16);
  return common::dispatch_dtype("nsa_prefill", "q", dtype, [&]<class Element>() -> Status {
    merge_splits_kernel<Element><<<dim3(grid, p.num_launch_branches), kThreads, 0, stream>>>(p, dim_v);
    FSA_CHECK_LAUNCH("merge_splits_kernel", stream);
    return Status::ok();
  });
}

}  // namespace fsa::cuda::decode
