// topk_idx of the new tokens from the selection's per-range candidates (decode_select_kernel.cuh):
// per (kv head, token), one warp takes the best chosen_capacity(bq) of the token's ranges' lists in
// the strict order (higher score, then lower block), adds the forced blocks (the first I and the
// last L of {0..bq}), and writes the min(K, bq + 1) blocks ascending, then -1 (select_blocks' rows).
// The global best are within the union of each range's best (a block outranked by K blocks of its
// own range is outranked by them globally), so the result is the one-pass selection's.
#include <climits>
#include <cstdint>

#include "cuda/runtime.hpp"
#include "kernels/decode/decode.hpp"
#include "kernels/decode/decode_paged.cuh"
#include "kernels/select/select_tiling.hpp"
#include "kernels/select/select_topk_merge.cuh"

namespace fsa::cuda::decode {

namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;

__global__ void __launch_bounds__(kThreads) finalize_topk_kernel(const __grid_constant__ SelectParams p) {
  __shared__ int chosen_s[kWarps][kMaxTopk];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const long long pair_index = static_cast<long long>(blockIdx.x) * kWarps + warp;  // (kv head, token)
  const BatchInfo& batch = p.batch;
  if (pair_index >= batch.tokens * p.nsa.heads_kv) return;
  const int g = static_cast<int>(pair_index / batch.tokens);
  const long long token = pair_index % batch.tokens;
  const int b = seq_of_row(batch.cu_seqlens, batch.cu_stride, batch.num_seqs, token);
  if (b < 0) return;
  const SeqInfo seq = seq_info(batch, b);
  const int K = p.nsa.topk, I = p.nsa.init_blocks, L = p.nsa.local_blocks;
  const int bq = static_cast<int>((seq.cached + token - seq.row0) / p.nsa.block_size);
  const int capacity = sel::chosen_capacity(bq, K, I, L);

  // The best `capacity` entries, one per round; a taken entry is marked in place (block -1): the
  // candidates are this step's scratch, rewritten by the next selection.
  Candidate* entries = p.candidates + (static_cast<long long>(g) * batch.tokens + token) * p.ranges * K;
  const int count = p.ranges * K;
  int chosen = 0;
  for (; chosen < capacity; ++chosen) {
    float best_score = -INFINITY;
    int best_block = INT_MAX, best_entry = -1;
    for (int e = lane; e < count; e += 32) {
      const Candidate c = entries[e];
      if (c.block < 0) continue;
      if (sel::ranks_before(c.score, c.block, best_score, best_block)) {
        best_score = c.score;
        best_block = c.block;
        best_entry = e;
      }
    }
    // Warp arg-best; the owner lane of the winning entry marks it.
#pragma unroll
    for (int mask = 16; mask > 0; mask /= 2) {
      const float other_score = __shfl_xor_sync(0xffffffffu, best_score, mask);
      const int other_block = __shfl_xor_sync(0xffffffffu, best_block, mask);
      const int other_entry = __shfl_xor_sync(0xffffffffu, best_entry, mask);
      if (sel::ranks_before(other_score, other_block, best_score, best_block)) {
        best_score = other_score;
        best_block = other_block;
        best_entry = other_entry;
      }
    }
    if (best_block == INT_MAX) break;  // warp-uniform: fewer candidates than capacity (never, for
                                       // a complete selection; kept so a short list cannot loop)
    if (best_entry % 32 == lane) entries[best_entry].block = -1;
    if (lane == 0) chosen_s[warp][chosen] = best_block;
    __syncwarp();
  }
  __syncwarp();

  // Chosen plus forced blocks, ascending: each value's rank is the count of smaller values.
  const int head_end = sel::forced_head(bq, I), tail_start = sel::forced_tail_start(bq, I, L);
  const int forced = sel::forced_count(bq, I, L);
  const int total = min(K, chosen + forced);
  std::int32_t* row = p.topk + g * p.topk_head_stride + token * p.topk_token_stride;
  for (int u = lane; u < K; u += 32) {
    if (u >= total) {
      row[u * p.topk_col_stride] = -1;
      continue;
    }
    const int f = u - chosen;
    const int value = u < chosen ? chosen_s[warp][u] : (f < head_end ? f : tail_start + (f - head_end));
    int rank = min(value, head_end) + max(0, min(value, bq + 1) - tail_start);
    for (int c = 0; c < chosen; ++c) rank += chosen_s[warp][c] < value ? 1 : 0;
    if (rank < K) row[rank * p.topk_col_stride] = value;
  }
}

}  // namespace

Status launch_finalize_topk(const SelectParams& p, cudaStream_t stream) {
  const long long pairs = p.batch.tokens * p.nsa.heads_kv;
  if (pairs == 0 || p.batch.num_seqs == 0) return Status::ok();
  const long long ctas = (pairs + kWarps - 1) / kWarps;
  if (ctas > 0x7fffffffLL)
    return FSA_ERROR(StatusCode::kNotImplemented, "q: nsa_prefill: " + std::to_string(pairs) + " rows exceed the grid limit");
  finalize_topk_kernel<<<static_cast<unsigned>(ctas), kThreads, 0, stream>>>(p);
  FSA_CHECK_LAUNCH("finalize_topk_kernel", stream);
  return Status::ok();
}

}  // namespace fsa::cuda::decode
