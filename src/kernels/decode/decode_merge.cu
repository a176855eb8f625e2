// The merge of an attention branch that ran in several splits (decode_attn_kernel.cuh): per query
// row (token, head), the splits' unnormalised outputs and row statistics combined by the
// log-sum-exp rule in split order (deterministic, no atomics):
//   M = max_s m_s,  L = sum_s l_s 2^(m_s - M),  o = sum_s o_s 2^(m_s - M) / L,  lse = M ln 2 + ln L,
// over the splits that saw a key (l_s > 0); a row no split saw gets o = 0 and lse = -inf. One warp
// per row: its lanes read the splits' statistics together (lane i splits i, i + 32, ...) and reduce
// M and L across the warp, then each lane combines four output columns (one float4 a split), the
// split loop unrolled so that several splits' loads are in flight. A row's merge is a handful of
// dependent loads, so the launch is bound by their latency, not by its few megabytes.
//
// merge_combine_kernel: the selected branch's merge and the step's gated combination in one launch
// (a step's last two launches are one: measured 1-3% faster a decode step on an H100, bit for bit
// the outputs of merge_splits_kernel and combine_forward, docs/kernels/decode.md).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>

#include "cuda/runtime.hpp"
#include "kernels/common/convert.cuh"
#include "kernels/common/dependent_launch.cuh"
#include "kernels/common/launch_checks.hpp"
#include "kernels/common/mma_sm80.cuh"
#include "kernels/combine/gated_sum.cuh"
#include "kernels/decode/decode.hpp"

namespace fsa::cuda::decode {

namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

// One row's merge by a warp (`row`: token x Hq + head): the splits' statistics reduced to the
// row's maximum and sum, then for each pass of 128 columns the lane's four columns combined over the
// splits and handed to store(col, value) (every lane runs every pass, the shuffles need the whole
// warp; a lane past Dv gets has_col false and stores nothing). Returns the row's lse (natural log;
// -inf for a row no split saw).
template <class Store>
__device__ __forceinline__ float merge_row(const BranchOutput& out, long long rows, long long row, int dim_v,
                                           Store store) {
  const int lane = threadIdx.x % 32;
  const int splits = out.splits;
  // This lane's splits (lane, lane + 32: splits <= kMaxSplits = 64).
  RowStats mine[2];
  float max_log2 = -INFINITY;
#pragma unroll
  for (int k = 0; k < 2; ++k) {
    const int s = lane + 32 * k;
    mine[k] = s < splits ? out.stats[s * rows + row] : RowStats{-INFINITY, 0.0f};
    if (mine[k].sum > 0.0f) max_log2 = fmaxf(max_log2, mine[k].max_log2);
  }
  for (int offset = 16; offset > 0; offset /= 2) max_log2 = fmaxf(max_log2, __shfl_xor_sync(0xffffffffu, max_log2, offset));
  float scaled[2], sum = 0.0f;
#pragma unroll
  for (int k = 0; k < 2; ++k) {
    scaled[k] = mine[k].sum > 0.0f ? exp2f(mine[k].max_log2 - max_log2) : 0.0f;
    sum += mine[k].sum * scaled[k];
  }
  for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
  const float inv_sum = sum > 0.0f ? 1.0f / sum : 0.0f;
  const float weight[2] = {scaled[0] * inv_sum, scaled[1] * inv_sum};  // 0 for a split without keys
  for (int c0 = 0; c0 < dim_v; c0 += 128) {
    const int col = c0 + 4 * lane;
    const bool has_col = col < dim_v;
    float4 value = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll 4
    for (int s = 0; s < splits; ++s) {
      const float w = __shfl_sync(0xffffffffu, s < 32 ? weight[0] : weight[1], s % 32);
      if (w == 0.0f || !has_col) continue;  // the merge reads no output of a split without keys
      const float4 part = *reinterpret_cast<const float4*>(out.o_part + (s * rows + row) * dim_v + col);
      value.x += part.x * w;
      value.y += part.y * w;
      value.z += part.z * w;
      value.w += part.w * w;
    }
    if (has_col) store(col, value);
  }
  return sum > 0.0f ? max_log2 * 0.69314718055994531f + logf(sum) : -INFINITY;
}

// Four columns of a row rounded to the element type and stored at o + col; returns the rounded
// values (as the combine reads them back).
template <class Element>
__device__ __forceinline__ float4 store_columns(Element* o, int col, float4 value) {
  const std::uint32_t lo = mma::pack2<Element>(value.x, value.y), hi = mma::pack2<Element>(value.z, value.w);
  *reinterpret_cast<std::uint32_t*>(o + col) = lo;
  *reinterpret_cast<std::uint32_t*>(o + col + 2) = hi;
  const Element* e = reinterpret_cast<const Element*>(&lo);
  const Element* f = reinterpret_cast<const Element*>(&hi);
  using C = common::Convert<Element>;
  return make_float4(C::to_float(e[0]), C::to_float(e[1]), C::to_float(f[0]), C::to_float(f[1]));
}

// blockIdx.y: the launched branch; warps over the N x Hq rows.
template <class Element>
__global__ void __launch_bounds__(kThreads) merge_splits_kernel(const __grid_constant__ AttnParams p, int dim_v) {
  common::await_prior_grids();  // before any global access: launched by launch_dependent
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
    if (token >= valid_tokens) continue;  // rows past the batch have no partials (warp-uniform)
    Element* o = static_cast<Element*>(out.o) + token * out.o_token_stride + head * out.o_head_stride;
    const float lse = merge_row(out, rows, row, dim_v, [&](int col, float4 value) { store_columns(o, col, value); });
    if (out.lse != nullptr && lane == 0) out.lse[head * out.lse_head_stride + token * out.lse_token_stride] = lse;
  }
}

// The selected branch's merge and the gated combination in one launch:
// per row, o_slc merged from its splits (rounded and stored as merge_splits_kernel does; read back
// when the branch ran in one split), then o = g_cmp o_cmp + g_slc o_slc + g_swa o_swa in fp32 from
// the rounded branch outputs by the combine's own gated_sum, so that it agrees bit for bit with
// merge_splits_kernel then combine_forward (the route it replaced, which the training layer's
// combination still is) on every row of the batch. Rows of q past cu_seqlens[nseq] (no sequence's: a caller error the
// GPU does not check) are not written here, where combine_forward writes them from whatever the
// branches left there.
template <class Element>
__global__ void __launch_bounds__(kThreads) merge_combine_kernel(const __grid_constant__ AttnParams p,
                                                                 const __grid_constant__ CombineRows c, int dim_v) {
  common::await_prior_grids();  // before any global access: launched by launch_dependent
  using C = common::Convert<Element>;
  const BranchOutput& slc = p.out[static_cast<int>(Branch::kSelected)];
  const BranchOutput& cmp = p.out[static_cast<int>(Branch::kCompressed)];
  const BranchOutput& swa = p.out[static_cast<int>(Branch::kWindow)];
  const long long rows = p.batch.tokens * p.nsa.heads_q;
  const long long valid_tokens = p.batch.cu_seqlens[p.batch.num_seqs * p.batch.cu_stride];
  const long long warps = static_cast<long long>(gridDim.x) * kWarps;
  auto row_of = [](const BranchOutput& out, long long token, int head) {
    return static_cast<Element*>(out.o) + token * out.o_token_stride + head * out.o_head_stride;
  };
  auto load4 = [](const Element* x, int col) {
    return make_float4(C::to_float(x[col]), C::to_float(x[col + 1]), C::to_float(x[col + 2]), C::to_float(x[col + 3]));
  };
  for (long long row = static_cast<long long>(blockIdx.x) * kWarps + threadIdx.x / 32; row < rows; row += warps) {
    const long long token = row / p.nsa.heads_q;
    const int head = static_cast<int>(row % p.nsa.heads_q);
    if (token >= valid_tokens) continue;  // rows past the batch (warp-uniform)
    Element* o_slc = row_of(slc, token, head);
    const Element* gate = static_cast<const Element*>(c.gates) + token * c.gate_token_stride + head * c.gate_head_stride;
    const float g[3] = {C::to_float(gate[0]), C::to_float(gate[1]), C::to_float(gate[2])};
    Element* o = static_cast<Element*>(c.o) + token * c.o_token_stride + head * c.o_head_stride;
    auto write_o = [&](int col, float4 selected) {
      const float4 compressed = load4(row_of(cmp, token, head), col), window = load4(row_of(swa, token, head), col);
      store_columns(o, col, make_float4(combine::gated_sum(g, compressed.x, selected.x, window.x),
                                        combine::gated_sum(g, compressed.y, selected.y, window.y),
                                        combine::gated_sum(g, compressed.z, selected.z, window.z),
                                        combine::gated_sum(g, compressed.w, selected.w, window.w)));
    };
    if (slc.splits > 1) {
      merge_row(slc, rows, row, dim_v, [&](int col, float4 value) { write_o(col, store_columns(o_slc, col, value)); });
    } else {
      for (int col = 4 * (threadIdx.x % 32); col < dim_v; col += 128) write_o(col, load4(o_slc, col));
    }
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
    return common::launch_dependent<&merge_splits_kernel<Element>>(
        "merge_splits_kernel", dim3(grid, p.num_launch_branches), kThreads, 0, stream, p, dim_v);
  });
}

Status launch_merge_combine(const AttnParams& p, const CombineRows& c, DType dtype, int dim_v, cudaStream_t stream) {
  const long long rows = p.batch.tokens * p.nsa.heads_q;
  if (rows == 0 || p.batch.num_seqs == 0) return Status::ok();
  const long long ctas = (rows + kWarps - 1) / kWarps;
  const unsigned grid = static_cast<unsigned>(ctas < 132LL * 16 ? ctas : 132LL * 16);
  return common::dispatch_dtype("nsa_decode", "q", dtype, [&]<class Element>() -> Status {
    return common::launch_dependent<&merge_combine_kernel<Element>>("merge_combine_kernel", grid, kThreads, 0,
                                                                    stream, p, c, dim_v);
  });
}

}  // namespace fsa::cuda::decode
