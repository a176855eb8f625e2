// The fused selection's second half: block scores from the compressed attention's block partials
// (decode_block_partials.cuh) and each range's best candidates, which decode_topk.cu merges into
// topk_idx as for the two-pass route.
//
// One CTA per (token, kv head g, range of the token's blocks [0, bq]). Block j's score is the sum
// over the key quarters u that hold a key meeting j (one or two) and the group's selecting heads h
// of values[h, u, j] * 2^(M[h, u] - lse_h log2 e): each quarter's partial taken from the maximum it
// was written relative to, to the row's final normaliser. Only the keys the token sees count: a
// quarter's other keys are masked to 0 in the partials, and quarters past the token's visible keys
// are not read.
//
// The quarters are summed over the heads first, per (quarter, block of the quarter), by a thread
// each, with the heads' loads independent and the (quarter, block) pairs of a warp contiguous in
// the partials; then each block adds its one or two quarters' sums. A thread per block walking the
// heads and quarters in turn (each step three dependent global loads) took 30.0 us of a decode
// step's kernels at 16 x 128K, G 16, q_len 1 on an H100 (each kernel alone); this takes 22.8.
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
// Four CTAs a SM: a decode step's grid (16 tokens x 4 kv heads x 8 ranges at 16 x 128K G 16) in one
// wave of an H100. Without the bound ptxas took 80 registers once the early exit waits
// (before_early_exit): three CTAs a SM, two waves, 59.7 us against 22.5 on an H100.
constexpr int kMinCtas = 4;
// Per-(quarter, block) head sums staged at a time: the range's quarters are summed in chunks of
// kStageFloats / quarter_blocks quarters (409 at l 32, s 16, B 64: a range of 1636 blocks).
constexpr int kStageFloats = 2048;
// Heads whose loads a thread keeps in flight at once.
constexpr int kHeadBatch = 8;

__global__ void __launch_bounds__(kThreads, kMinCtas) block_scores_kernel(const __grid_constant__ SelectParams p) {
  // The range's blocks (range_capacity), the staged sums (kStageFloats), the heads' lse log2 e.
  extern __shared__ float score_s[];
  const BatchInfo& batch = p.batch;
  const long long token = blockIdx.x;
  const int g = blockIdx.y, range = blockIdx.z;
  const int b = seq_of_row(batch.cu_seqlens, batch.cu_stride, batch.num_seqs, token);
  if (b < 0) {
    common::before_early_exit();
    return;
  }
  const SeqInfo seq = seq_info(batch, b);
  const int l = p.nsa.cmp_len, s = p.nsa.cmp_stride, B = p.nsa.block_size;
  const int G = p.nsa.group, QB = p.partials.quarter_blocks, heads = p.nsa.heads_used;
  const int Bs = B / s, Ls = l / s;
  const long long position = seq.cached + token - seq.row0;
  const BlockRange blocks = block_range(position / B + 1, p.ranges, p.range_capacity, range);
  const long long j0 = blocks.first, j1 = blocks.end;
  const int range_blocks = static_cast<int>(j1 - j0);
  const long long visible = visible_count(position, l, s);
  const long long quarters = p.partials.quarters;
  // The quarters any block of the range reads: from the one holding its first block's first key to
  // the one holding its last block's last visible key (none when the range sees no key).
  const long long key_first = j1 > j0 ? first_key_of_block(j0, l, s, B) : 0;
  const long long key_last = j1 > j0 ? min(end_key_of_block(j1 - 1, s, B), visible) - 1 : -1;
  const long long u_first = key_first / kQuarterKeys;
  const long long u_last = key_last >= key_first ? min(key_last / kQuarterKeys, quarters - 1) : u_first - 1;
  float* stage_s = score_s + p.range_capacity;
  float* lse_log2_s = stage_s + kStageFloats;
  const int chunk_quarters = kStageFloats / QB;
  const long long row0 = token * p.nsa.heads_q + static_cast<long long>(g) * G;  // the group's first partial row
  common::await_prior_grids();  // the lookups above read caller inputs only; the partials are the step's

  for (int h = threadIdx.x; h < heads; h += kThreads)
    lse_log2_s[h] = p.lse[(g * G + h) * p.lse_head_stride + token * p.lse_token_stride] * common::kLog2e;
  for (int jj = threadIdx.x; jj < range_blocks; jj += kThreads) score_s[jj] = 0.0f;
  __syncthreads();

  for (long long ua = u_first; ua <= u_last; ua += chunk_quarters) {
    const int chunk = static_cast<int>(min(static_cast<long long>(chunk_quarters), u_last + 1 - ua));
    // Sum over the heads of quarter ua + uu's partial of its block jq, for every (uu, jq).
    for (int item = threadIdx.x; item < chunk * QB; item += kThreads) {
      const long long u = ua + item / QB;
      const int jq = item % QB;
      float sum = 0.0f;
      for (int h0 = 0; h0 < heads; h0 += kHeadBatch) {
        float value[kHeadBatch], top[kHeadBatch];
#pragma unroll
        for (int i = 0; i < kHeadBatch; ++i) {
          const long long at = (row0 + h0 + i) * quarters + u;
          const bool used = h0 + i < heads;
          value[i] = used ? __half2float(__ushort_as_half(p.partials.values[at * QB + jq])) : 0.0f;
          top[i] = used ? p.partials.quarter_max[at] : 0.0f;
        }
#pragma unroll
        for (int i = 0; i < kHeadBatch; ++i)
          // A row's maximum never exceeds its lse (log2 e lse = M + log2 sum, sum >= 1); a quarter
          // whose maximum is the row's partial one (key-quarter layout) is at most the row's too.
          if (value[i] != 0.0f) sum += value[i] * exp2f(top[i] - lse_log2_s[h0 + i]);
      }
      stage_s[item] = sum;
    }
    __syncthreads();
    // Each block adds the sums of its quarters in this chunk, in quarter order (in 32 bits and units
    // of s: decode_tiling.hpp's *_units helpers; positions, hence blocks and keys, are below 2^31).
    const int ua32 = static_cast<int>(ua), ub32 = static_cast<int>(ua + chunk - 1);
    for (int jj = threadIdx.x; jj < range_blocks; jj += kThreads) {
      const int j = static_cast<int>(j0) + jj;
      const int key_lo = first_key_of_block_units(j, Ls, Bs);
      const int key_hi = static_cast<int>(min(end_key_of_block_units(j, Bs), visible));
      if (key_lo >= key_hi) continue;
      const int u_lo = max(key_lo / kQuarterKeys, ua32);
      const int u_hi = min((key_hi - 1) / kQuarterKeys, ub32);  // ub32 <= u_last <= quarters - 1
      float score = score_s[jj];
      for (int u = u_lo; u <= u_hi; ++u) score += stage_s[(u - ua32) * QB + j - quarter_first_block_units(u, Bs)];
      score_s[jj] = score;
    }
    __syncthreads();
  }
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
  if (p.partials.quarter_blocks < 1 || p.partials.quarter_blocks > kStageFloats)
    return FSA_ERROR(StatusCode::kInternal, "nsa_decode: block partials of " +
                                                std::to_string(p.partials.quarter_blocks) + " blocks a quarter");
  const std::size_t smem =
      (static_cast<std::size_t>(p.range_capacity) + kStageFloats + static_cast<std::size_t>(p.nsa.heads_used)) *
      sizeof(float);
  if (smem > 48 * 1024)  // past the default dynamic limit: a group of very many heads
    FSA_CUDA_CHECK(cudaFuncSetAttribute(block_scores_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(smem)));
  return common::launch_dependent<&block_scores_kernel>(
      "block_scores_kernel", dim3(static_cast<unsigned>(p.batch.tokens), p.nsa.heads_kv, p.ranges), kThreads, smem,
      stream, p);
}

}  // namespace fsa::cuda::decode
