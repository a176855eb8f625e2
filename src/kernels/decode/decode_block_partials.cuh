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

// One warp's 16 rows of a tile's probabilities (mma.sync C fragments: rows group and group + 8,
// columns 2 pair and 2 pair + 1 of each 8 columns) and their maxima, into shared memory.
template <int kKeysTile>
__device__ __forceinline__ void stage_tile_probabilities(const float (&prob)[kKeysTile / 8][4], const float (&row_max)[2],
                                                         float* probs_s, float* row_max_s, int row0) {
  const int lane = threadIdx.x % 32, group = lane / 4, pair = lane % 4;
#pragma unroll
  for (int n = 0; n < kKeysTile / 8; ++n)
#pragma unroll
    for (int h = 0; h < 2; ++h)
      *reinterpret_cast<float2*>(probs_s + (row0 + group + 8 * h) * kLdProb + n * 8 + 2 * pair) =
          make_float2(prob[n][2 * h], prob[n][2 * h + 1]);
  if (pair == 0) {
    row_max_s[row0 + group] = row_max[0];
    row_max_s[row0 + group + 8] = row_max[1];
  }
}

// The same for the key-quarter layout (decode_attn_kernel.cuh): the warp holds all 16 rows but
// only its quarter of the tile's keys (columns of probs_s from the quarter's first), relative to
// its own running maxima; quarter_max holds every quarter's. The staged values are taken to the
// largest of the four, M = max_w M_w (2^(x - M_w) 2^(M_w - M)), which one quarter writes as the rows'
// maxima: the partials then read as those of the rows layout.
template <int kCols>
__device__ __forceinline__ void stage_quarter_probabilities(const float (&prob)[kCols / 8][4], const float (&row_max)[2],
                                                            const float (&quarter_max)[4][16], float* probs_s,
                                                            float* row_max_s, bool writes_max) {
  const int lane = threadIdx.x % 32, group = lane / 4, pair = lane % 4;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int r = group + 8 * h;
    const float most = fmaxf(fmaxf(quarter_max[0][r], quarter_max[1][r]), fmaxf(quarter_max[2][r], quarter_max[3][r]));
    // A quarter that has seen no key yet has probabilities 0 (and M_w = -inf, so does M when none has).
    const float factor = row_max[h] == -INFINITY ? 0.0f : common::fast_exp2(row_max[h] - most);
#pragma unroll
    for (int n = 0; n < kCols / 8; ++n)
      *reinterpret_cast<float2*>(probs_s + r * kLdProb + n * 8 + 2 * pair) =
          make_float2(prob[n][2 * h] * factor, prob[n][2 * h + 1] * factor);
    if (writes_max && pair == 0) row_max_s[r] = most;
  }
}

// The CTA's rows [first_row, first_row + rows) of a sequence whose first packed row is seq_row0
// (token-major: row / G is the token, row % G the head in group g), as write_tile_partials reads
// them: computed once per CTA, not per key tile.
struct PartialRows {
  long long first_token;  // packed row of the first row's token
  int first_head, rows;
};
__device__ __forceinline__ PartialRows partial_rows(long long first_row, int rows, long long seq_row0, int G) {
  const long long first_in_seq = first_row / G;
  return {seq_row0 + first_in_seq, static_cast<int>(first_row - first_in_seq * G), rows};
}

// Every (row, block) of key tile `tile` (keys [v0, v0 + kKeys)) of the CTA's rows, by the CTA's
// threads. Rows of heads that do not select (heads_used) write nothing.
template <int kThreads>
__device__ __forceinline__ void write_tile_partials(const BlockPartials& out, const NsaNumbers& nsa, const float* probs_s,
                                                   const float* row_max_s, const PartialRows& at, int g, long long v0) {
  const long long tile = v0 / kKeys;
  if (tile >= out.tiles) return;  // only past the plan's context, which the tables cannot address
  // In units of s (tile_block_start, unit_overlap): 32-bit offsets from the tile's first key, no
  // division per key.
  const int Ls = nsa.cmp_len / nsa.cmp_stride, Bs = nsa.block_size / nsa.cmp_stride;
  const int G = nsa.group, TB = out.tile_blocks, rows = at.rows, first_head = at.first_head;
  const long long first_token = at.first_token;
  const int tile_base = tile_block_start(tile, 0, nsa.cmp_stride, nsa.block_size);  // once per tile
  for (int idx = threadIdx.x; idx < rows * TB; idx += kThreads) {
    const int r = idx / TB, jj = idx % TB;
    const int h = (first_head + r) % G;
    if (h >= nsa.heads_used) continue;
    const int block_lo = tile_base + jj * Bs;  // tile_block_start(tile, jj, s, B)
    const int i_begin = max(0, block_lo - Ls + 1), i_end = min(kKeys, block_lo + Bs);
    float sum = 0.0f;
    for (int i = i_begin; i < i_end; ++i)
      sum = fmaf(static_cast<float>(unit_overlap(i, block_lo, Ls, Bs)), probs_s[r * kLdProb + i], sum);
    const long long token = first_token + (first_head + r) / G;
    const long long at = (token * nsa.heads_q + static_cast<long long>(g) * G + h) * out.tiles + tile;
    out.values[at * TB + jj] = sum;
    if (jj == 0) out.tile_max[at] = row_max_s[r];
  }
}

}  // namespace fsa::cuda::decode
