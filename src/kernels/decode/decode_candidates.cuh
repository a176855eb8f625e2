// A token's best candidates of one range of its blocks, from block scores in shared memory: the
// last step of both selection routes (decode_select_kernel.cuh scores the range from q and the
// compressed keys; decode_block_scores.cu from the compressed attention's block partials). The
// global top-K of a token lies in the union of its ranges' lists, which decode_topk.cu merges.
#pragma once

#include <climits>
#include <cmath>

#include "kernels/decode/decode_params.hpp"
#include "kernels/select/select_tiling.hpp"
#include "kernels/select/select_topk_merge.cuh"

namespace fsa::cuda::decode {

// The best remaining candidate of a warp's lanes (score, block) in the strict order of
// sel::ranks_before; (-inf, INT_MAX) when none.
__device__ __forceinline__ Candidate warp_best(float score, int block) {
#pragma unroll
  for (int mask = 16; mask > 0; mask /= 2) {
    const float other_score = __shfl_xor_sync(0xffffffffu, score, mask);
    const int other_block = __shfl_xor_sync(0xffffffffu, block, mask);
    if (sel::ranks_before(other_score, other_block, score, block)) {
      score = other_score;
      block = other_block;
    }
  }
  return {score, block};
}

// One warp: the range's best min(capacity, candidates) non-forced blocks of a token whose last
// block is bq, best first (higher score, then lower block), written to list[0, K) and padded with
// empty entries. scores[jj] is block j0 + jj's score, for jj < range_blocks; it is consumed (NaN
// ranks as -inf, as in the training selection; NaN then marks a block already taken).
__device__ __forceinline__ void keep_range_candidates(float* scores, int range_blocks, int j0, int bq, int K, int I,
                                                      int L, Candidate* list) {
  const int lane = threadIdx.x % 32;
  const int capacity = sel::chosen_capacity(bq, K, I, L);
  for (int jj = lane; jj < range_blocks; jj += 32)
    if (isnan(scores[jj])) scores[jj] = -INFINITY;
  __syncwarp();
  int chosen = 0;
  for (; chosen < capacity; ++chosen) {
    float best_score = -INFINITY;
    int best_block = INT_MAX;
    for (int jj = lane; jj < range_blocks; jj += 32) {
      const int j = j0 + jj;
      const float score = scores[jj];
      if (!sel::is_candidate(j, bq, I, L) || isnan(score)) continue;
      if (sel::ranks_before(score, j, best_score, best_block)) {
        best_score = score;
        best_block = j;
      }
    }
    const Candidate best = warp_best(best_score, best_block);
    if (best.block == INT_MAX) break;  // warp-uniform: no candidate left in this range
    if (lane == 0) list[chosen] = best;
    if ((best.block - j0) % 32 == lane) scores[best.block - j0] = NAN;
    __syncwarp();
  }
  for (int u = chosen + lane; u < K; u += 32) list[u] = {-INFINITY, -1};
}

}  // namespace fsa::cuda::decode
