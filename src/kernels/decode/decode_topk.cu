// topk_idx of the new tokens from the selection's per-range candidates (decode_select_kernel.cuh):
// per (kv head, token), one warp takes the best chosen_capacity(bq) of the token's ranges' lists in
// the strict order (higher score, then lower block), adds the forced blocks (the first I and the
// last L of {0..bq}), and writes the min(K, bq + 1) blocks ascending, then -1 (select_blocks' rows).
// The global best are within the union of each range's best (a block outranked by K blocks of its
// own range is outranked by them globally), so the result is the one-pass selection's.
#include <climits>
#include <cstdint>

#include "cuda/runtime.hpp"
#include "kernels/common/dependent_launch.cuh"
#include "kernels/decode/decode.hpp"
#include "kernels/decode/decode_candidates.cuh"
#include "kernels/decode/decode_paged.cuh"
#include "kernels/select/select_tiling.hpp"
#include "kernels/select/select_topk_merge.cuh"

namespace fsa::cuda::decode {

namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
// Candidates a lane keeps in registers: a decode step's lists (ranges x K, 128 at 16 x 128K) are
// read once, not once per round (each round's re-read of the lists was a trip to L2 after the
// previous round's mark: 11 us for 13 rounds at that shape).
constexpr int kEntriesPerLane = 8;

// The best `capacity` of the `count` entries, one per round, into chosen (lane 0 writes); returns
// how many (fewer than capacity only for a short list, which a complete selection never has).
// Blocks are distinct across a token's ranges, so a round's winner is one lane's one entry.
__device__ __forceinline__ int choose_from_registers(const Candidate* entries, int count, int capacity, int* chosen) {
  const int lane = threadIdx.x % 32;
  float score[kEntriesPerLane];
  int block[kEntriesPerLane];
#pragma unroll
  for (int j = 0; j < kEntriesPerLane; ++j) {
    const int e = lane + 32 * j;
    const Candidate c = e < count ? entries[e] : Candidate{-INFINITY, -1};
    score[j] = c.score;
    block[j] = c.block;
  }
  int n = 0;
  for (; n < capacity; ++n) {
    float best_score = -INFINITY;
    int best_block = INT_MAX;
#pragma unroll
    for (int j = 0; j < kEntriesPerLane; ++j)
      if (block[j] >= 0 && sel::ranks_before(score[j], block[j], best_score, best_block)) {
        best_score = score[j];
        best_block = block[j];
      }
    best_block = warp_best(best_score, best_block).block;
    if (best_block == INT_MAX) break;  // warp-uniform
#pragma unroll
    for (int j = 0; j < kEntriesPerLane; ++j)
      if (block[j] == best_block) block[j] = -1;  // taken
    if (lane == 0) chosen[n] = best_block;
  }
  return n;
}

// The same for longer lists, a taken entry marked in place (block -1) by the lane that read it:
// the candidates are this step's scratch, rewritten by the next selection.
__device__ __forceinline__ int choose_in_place(Candidate* entries, int count, int capacity, int* chosen) {
  const int lane = threadIdx.x % 32;
  int n = 0;
  for (; n < capacity; ++n) {
    float best_score = -INFINITY;
    int best_block = INT_MAX, best_entry = -1;
    for (int e = lane; e < count; e += 32) {
      const Candidate c = entries[e];
      if (c.block >= 0 && sel::ranks_before(c.score, c.block, best_score, best_block)) {
        best_score = c.score;
        best_block = c.block;
        best_entry = e;
      }
    }
    const int own_block = best_block;
    best_block = warp_best(best_score, best_block).block;
    if (best_block == INT_MAX) break;  // warp-uniform
    if (own_block == best_block) entries[best_entry].block = -1;
    if (lane == 0) chosen[n] = best_block;
    __syncwarp();
  }
  return n;
}

__global__ void __launch_bounds__(kThreads) finalize_topk_kernel(const __grid_constant__ SelectParams p) {
  __shared__ int chosen_s[kWarps][kMaxTopk];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const long long pair_index = static_cast<long long>(blockIdx.x) * kWarps + warp;  // (kv head, token)
  const BatchInfo& batch = p.batch;
  if (pair_index >= batch.tokens * p.nsa.heads_kv) {
    common::before_early_exit();
    return;
  }
  const int g = static_cast<int>(pair_index / batch.tokens);
  const long long token = pair_index % batch.tokens;
  const int b = seq_of_row(batch.cu_seqlens, batch.cu_stride, batch.num_seqs, token);
  if (b < 0) {
    common::before_early_exit();
    return;
  }
  const SeqInfo seq = seq_info(batch, b);
  const int K = p.nsa.topk, I = p.nsa.init_blocks, L = p.nsa.local_blocks;
  const int bq = static_cast<int>((seq.cached + token - seq.row0) / p.nsa.block_size);
  const int capacity = sel::chosen_capacity(bq, K, I, L);
  common::await_prior_grids();  // the lookups above read caller inputs only; the candidates are the step's

  Candidate* entries = p.candidates + (static_cast<long long>(g) * batch.tokens + token) * p.ranges * K;
  const int count = p.ranges * K;
  const int chosen = count <= 32 * kEntriesPerLane ? choose_from_registers(entries, count, capacity, chosen_s[warp])
                                                   : choose_in_place(entries, count, capacity, chosen_s[warp]);
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
  return common::launch_dependent<&finalize_topk_kernel>("finalize_topk_kernel", static_cast<unsigned>(ctas),
                                                          kThreads, 0, stream, p);
}

}  // namespace fsa::cuda::decode
