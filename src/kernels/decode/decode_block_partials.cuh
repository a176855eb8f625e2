// The fused selection's first half, run inside the compressed branch's attention
// (decode_attn_kernel.cuh): after the online softmax of a key tile, each row's probabilities
// relative to its running maximum are summed into the selection blocks the tile meets, with the
// overlap weights, and written with that maximum (BlockPartials). decode_block_scores.cu rescales
// them by the row's final lse and sums the group's heads: the block scores come from the pass that
// reads the compressed keys for the attention, so the selection reads no key again.
//
// The probabilities are the attention's own (fast_exp2 of the same scores), so the scores differ
// from the reference's only by that rounding and the order of the sums (per tile, then over tiles
// and heads, where the reference sums heads first): the tests compare topk tie-aware.
#pragma once

#include <cstdint>

#include "kernels/common/fast_exp.cuh"
#include "kernels/decode/decode_params.hpp"
#include "kernels/decode/decode_tiling.hpp"

namespace fsa::cuda::decode {

// One warp's 16 rows (row0 + group and row0 + group + 8) of a tile's probabilities (mma.sync C
// fragments: columns 2 pair and 2 pair + 1 of each 8), row h's scaled by factor[h], into shared
// memory, and where writes_max the maxima the staged values are then relative to.
template <int kCols>
__device__ __forceinline__ void stage_probabilities(const float (&prob)[kCols / 8][4], const float (&factor)[2],
                                                    const float (&staged_max)[2], float* probs_s, float* row_max_s,
                                                    int row0, bool writes_max) {
  const int lane = threadIdx.x % 32, group = lane / 4, pair = lane % 4;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int r = row0 + group + 8 * h;
#pragma unroll
    for (int n = 0; n < kCols / 8; ++n)
      *reinterpret_cast<float2*>(probs_s + r * kLdProb + n * 8 + 2 * pair) =
          make_float2(prob[n][2 * h] * factor[h], prob[n][2 * h + 1] * factor[h]);
    if (writes_max && pair == 0) row_max_s[r] = staged_max[h];
  }
}

// The key-quarter layout (decode_attn_kernel.cuh): a warp holds all 16 rows but only its quarter
// of the tile's keys, relative to its own running maxima; quarter_max holds every quarter's. Its
// probabilities are staged at the largest of the four, M = max_w M_w (2^(x - M_w) 2^(M_w - M)),
// so that the partials read as those of the rows layout: most[h] = M, factor[h] = 2^(M_w - M).
__device__ __forceinline__ void quarter_staging(const float (&row_max)[2], const float (&quarter_max)[4][16],
                                                float (&most)[2], float (&factor)[2]) {
  const int group = (threadIdx.x % 32) / 4;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int r = group + 8 * h;
    most[h] = fmaxf(fmaxf(quarter_max[0][r], quarter_max[1][r]), fmaxf(quarter_max[2][r], quarter_max[3][r]));
    // A quarter that has seen no key yet has probabilities 0 (and M_w = -inf, so does M when none has).
    factor[h] = row_max[h] == -INFINITY ? 0.0f : common::fast_exp2(row_max[h] - most[h]);
  }
}

// This thread's share of a key tile's partials, fixed for the CTA's lifetime (computed once, so
// that the per-tile loop has no division and no 64-bit row arithmetic): the CTA's rows [first_row,
// first_row + rows) of a sequence whose first packed row is seq_row0 (token-major: row / G is the
// token, row % G the head in group g) get `lanes` threads each (kThreads over the rows rounded up to
// 16, 32 or 64), and thread `lane` of a row writes its blocks lane, lane + lanes, ... of every tile.
struct PartialShare {
  long long row_at;  // (token * Hq + head) * tiles: the row's first tile; -1 where the thread has no
                     // row or the row's head does not select (heads_used)
  int row, lane, lanes;
};
template <int kThreads>
__device__ __forceinline__ PartialShare partial_share(long long first_row, int rows, long long seq_row0,
                                                      const NsaNumbers& nsa, int g, long long tiles) {
  static_assert(kThreads % kRows == 0, "every row of a full tile gets the same number of threads");
  const int rows_up = rows <= 16 ? 16 : (rows <= 32 ? 32 : kRows);
  PartialShare share;
  share.lanes = kThreads / rows_up;
  share.row = static_cast<int>(threadIdx.x) / share.lanes;
  share.lane = static_cast<int>(threadIdx.x) % share.lanes;
  share.row_at = -1;
  const int G = nsa.group;
  if (share.row < rows) {
    const long long row = first_row + share.row;
    const int h = static_cast<int>(row % G);
    if (h < nsa.heads_used) share.row_at = ((seq_row0 + row / G) * nsa.heads_q + static_cast<long long>(g) * G + h) * tiles;
  }
  return share;
}

// Every (row, block) of key tile `tile` (keys [v0, v0 + kKeys)) of the CTA's rows, each thread its
// share. A block's sum runs over its keys in ascending i from 0 (the order decode_block_scores.cu's
// reading assumes nothing about, kept for reproducibility).
__device__ __forceinline__ void write_tile_partials(const BlockPartials& out, const NsaNumbers& nsa, const float* probs_s,
                                                   const float* row_max_s, const PartialShare& share, long long v0) {
  const long long tile = v0 / kKeys;
  // Past the plan's context (which the tables cannot address), or no row of this thread's.
  if (tile >= out.tiles || share.row_at < 0) return;
  // In units of s (tile_block_start, unit_overlap): 32-bit offsets from the tile's first key.
  const int Ls = nsa.cmp_len / nsa.cmp_stride, Bs = nsa.block_size / nsa.cmp_stride;
  const int TB = out.tile_blocks;
  const int tile_base = tile_block_start(tile, 0, nsa.cmp_stride, nsa.block_size);  // once per tile
  const float* probs = probs_s + share.row * kLdProb;
  float* values = out.values + (share.row_at + tile) * TB;
  for (int jj = share.lane; jj < TB; jj += share.lanes) {
    const int block_lo = tile_base + jj * Bs;  // tile_block_start(tile, jj, s, B)
    const int i_begin = max(0, block_lo - Ls + 1), i_end = min(kKeys, block_lo + Bs);
    float sum = 0.0f;
    for (int i = i_begin; i < i_end; ++i)
      sum = fmaf(static_cast<float>(unit_overlap(i, block_lo, Ls, Bs)), probs[i], sum);
    values[jj] = sum;
  }
  if (share.lane == 0) out.tile_max[share.row_at + tile] = row_max_s[share.row];
}

}  // namespace fsa::cuda::decode
