// The fused selection's second half: block scores from the compressed attention's block partials
// (decode_block_partials.cuh) and each range's best candidates, which decode_topk.cu merges into
// topk_idx as for the two-pass route.
//
// One CTA per (token, kv head g, range of the token's blocks [0, bq]). Thread per block j: its
// score is the sum over the key quarters u that hold a key meeting j (ascending, one or two) and
// the group's selecting heads h (ascending) of values[h, u, j] * 2^(M[h, u] - lse_h log2 e): each
// quarter's partial taken from the maximum it was written relative to, to the row's final
// normaliser. Only the keys the token sees count: a quarter's other keys are masked to 0 in the
// partials, and quarters past the token's visible keys are not read.
#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>

#include "cuda/runtime.hpp"
#include "kernels/common/dependent_launch.cuh"
#include "kernels/common/fast_exp.cuh"
#include "kernels/decode/decode.hpp"
#include "kernels/decode/decode_candidates.cuh"
#include "kernels/decode/decode_paged.cuh"
#include "kernels/decode/decode_tiling.hpp"

namespace fsa::cuda::decode {

namespace {

constexpr int kThreads = 256;

__global__ void __launch_bounds__(kThreads) block_scores_kernel(const __grid_constant__ SelectParams p) {
  extern __shared__ float score_s[];  // the range's blocks (range_capacity at most)
  const BatchInfo& batch = p.batch;
  const long long token = blockIdx.x;
  const int g = blockIdx.y, range = blockIdx.z;
  const int b = seq_of_row(batch.cu_seqlens, batch.cu_stride, batch.num_seqs, token);
  if (b < 0) return;
  const SeqInfo seq = seq_info(batch, b);
  const int l = p.nsa.cmp_len, s = p.nsa.cmp_stride, B = p.nsa.block_size;
  const int G = p.nsa.group, QB = p.partials.quarter_blocks;
  const long long position = seq.cached + token - seq.row0;
  const BlockRange blocks = block_range(position / B + 1, p.ranges, p.range_capacity, range);
  const long long j0 = blocks.first, j1 = blocks.end;
  const int range_blocks = static_cast<int>(j1 - j0);
  const long long visible = visible_count(position, l, s);
  const long long quarters = p.partials.quarters;
  common::await_prior_grids();  // the lookups above read caller inputs only; the partials are the step's

  for (int jj = threadIdx.x; jj < range_blocks; jj += kThreads) {
    const long long j = j0 + jj;
    const long long key_lo = first_key_of_block(j, l, s, B);
    const long long key_hi = min(end_key_of_block(j, s, B), visible);
    float score = 0.0f;
    if (key_lo < key_hi) {
      const long long u_lo = key_lo / kQuarterKeys, u_hi = min((key_hi - 1) / kQuarterKeys, quarters - 1);
      for (long long u = u_lo; u <= u_hi; ++u) {
        const int jj_quarter = static_cast<int>(j - quarter_first_block(u, s, B));
        for (int h = 0; h < p.nsa.heads_used; ++h) {
          const int head = g * G + h;
          const float lse_log2 = p.lse[head * p.lse_head_stride + token * p.lse_token_stride] * common::kLog2e;
          const long long at = (token * p.nsa.heads_q + head) * quarters + u;
          const float value = __half2float(__ushort_as_half(p.partials.values[at * QB + jj_quarter]));
          // A row's maximum never exceeds its lse (log2 e lse = M + log2 sum, sum >= 1); a quarter
          // whose maximum is the row's partial one (key-quarter layout) is at most the row's too.
          if (value != 0.0f) score += value * exp2f(p.partials.quarter_max[at] - lse_log2);
        }
      }
    }
    score_s[jj] = score;
  }
  __syncthreads();
  if (threadIdx.x < 32) {
    const int bq = static_cast<int>(position / B);
    Candidate* list = p.candidates + ((static_cast<long long>(g) * batch.tokens + token) * p.ranges + range) * p.nsa.topk;
    keep_range_candidates(score_s, range_blocks, static_cast<int>(j0), bq, p.nsa.topk, p.nsa.init_blocks,
                          p.nsa.local_blocks, list);
  }
}

}  // namespace

Status launch_block_scores(const SelectParams& p, cudaStream_t stream) {
  if (p.batch.tokens == 0 || p.batch.num_seqs == 0) return Status::ok();
  if (p.batch.tokens > 0x7fffffffLL)
    return FSA_ERROR(StatusCode::kNotImplemented,
                     "q: nsa_decode: " + std::to_string(p.batch.tokens) + " tokens exceed the grid limit");
  const std::size_t smem = static_cast<std::size_t>(p.range_capacity) * sizeof(float);
  return common::launch_dependent<&block_scores_kernel>(
      "block_scores_kernel", dim3(static_cast<unsigned>(p.batch.tokens), p.nsa.heads_kv, p.ranges), kThreads, smem,
      stream, p);
}

}  // namespace fsa::cuda::decode
