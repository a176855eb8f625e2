// The fused selection's first half, run inside the compressed branch's attention
// (decode_attn_kernel.cuh): after the online softmax of a key tile, each row's probabilities
// relative to a running maximum are summed, per key quarter of the tile, into the selection blocks
// the quarter meets, with the overlap weights, and written with that maximum (BlockPartials).
// decode_block_scores.cu rescales them by the row's final lse and sums the group's heads: the block
// scores come from the pass that reads the compressed keys for the attention, so the selection
// reads no key again.
//
// Each warp writes the partials of the keys it holds, from its registers, with no CTA barrier and
// no shared staging (staging every tile's probabilities for the CTA's threads cost 48 of the
// compressed launch's 164 us at 16 x 128K, G 16: docs/kernels/decode.md): per key quarter, the
// probabilities in C-fragment layout become the A operand of one m16n8k16 product with the
// quarter's overlap weights W[key][block] (small integers), which sums every row's keys into up to
// eight blocks at once. In the key-quarter layout (a tile of at most 16 rows: every decode step of
// q_len x G <= 16) a warp holds one quarter of each key tile for all rows, relative to its own
// maxima; in the rows layout it holds 16 rows and all four quarters, relative to the rows' maxima.
#pragma once

#include <cuda_fp16.h>

#include <cstdint>

#include "kernels/common/mma_sm80.cuh"
#include "kernels/common/warp_tile_mma.cuh"
#include "kernels/decode/decode_params.hpp"
#include "kernels/decode/decode_tiling.hpp"

namespace fsa::cuda::decode {

// Where a query row's partials go: its first quarter's values and maximum (null: the row writes
// none). Made once per CTA, so that a tile's stores add only the quarter's offset.
struct PartialRow {
  std::uint16_t* values;
  float* max;
};

// The partial row of query row `row` of a tile (packed rows of one sequence whose first token is
// seq_row0; token-major: row / G the token, row % G the head in group g): its first quarter,
// (token Hq + head) quarters in, or none where the row is past the tile (last_row) or its head
// does not select (heads_used).
__device__ __forceinline__ PartialRow partial_row_at(const BlockPartials& out, long long row, long long last_row,
                                                     long long seq_row0, const NsaNumbers& nsa, int g) {
  if (row > last_row) return {nullptr, nullptr};
  const int G = nsa.group, h = static_cast<int>(row % G);
  if (h >= nsa.heads_used) return {nullptr, nullptr};
  const long long first = ((seq_row0 + row / G) * nsa.heads_q + static_cast<long long>(g) * G + h) * out.quarters;
  return {out.values + first * out.quarter_blocks, out.quarter_max + first};
}

// The overlap weights of a key quarter's blocks n0 .. n0 + 7 in the B operand's layout: this lane's
// column of W (block n0 + group) at rows 2 pair, 2 pair + 1, 2 pair + 8, 2 pair + 9; past the
// quarter's blocks the weights are 0. In units of s from the quarter's first key, its block jj
// covers [block_lo0 + jj Bs, block_lo0 + (jj + 1) Bs) (quarter_block_start).
__device__ __forceinline__ void quarter_weights(int block_lo0, int n0, int Ls, int Bs, std::uint32_t& b0,
                                                std::uint32_t& b1) {
  const int lane = threadIdx.x % 32, group = lane / 4, pair = lane % 4;
  const int block_lo = block_lo0 + (n0 + group) * Bs;
  auto weight = [&](int key) { return static_cast<float>(unit_overlap(key, block_lo, Ls, Bs)); };
  b0 = mma::pack2<__half>(weight(2 * pair), weight(2 * pair + 1));
  b1 = mma::pack2<__half>(weight(2 * pair + 8), weight(2 * pair + 9));
}

// Where every quarter meets its blocks at the same offsets (Bs = B / s divides kQuarterKeys: each
// quarter starts on a block boundary) and one product covers them (quarter_blocks <= 8), every
// quarter has the same weights: the launch makes them once, per lane, into `fixed` (shared memory,
// the CTA's first warp; the caller syncs), and write_partials reads them there. Returns whether they
// are fixed; else each quarter computes its own.
__device__ __forceinline__ bool make_fixed_weights(const BlockPartials& out, const NsaNumbers& nsa, uint2* fixed) {
  const int Ls = nsa.cmp_len / nsa.cmp_stride, Bs = nsa.block_size / nsa.cmp_stride;
  if (kQuarterKeys % Bs != 0 || out.quarter_blocks > 8) return false;
  if (threadIdx.x < 32) quarter_weights(0, 0, Ls, Bs, fixed[threadIdx.x].x, fixed[threadIdx.x].y);
  return true;
}

// One warp's partials of key tile `tile`: quarters quarter0 .. quarter0 + kCols / 16 - 1, whose
// keys are the columns 16 qi .. 16 qi + 15 of prob (the online softmax's C fragments: rows group
// and group + 8, columns 2 pair and 2 pair + 1 of each 8), relative to row_max. rows_at: the
// partial_row_at of the warp's 16 rows (shared memory). Per quarter and 8 blocks one product P W, with P in fp16
// (probabilities in [0, 2^8] relative to the lazily moved maximum, flash::online_softmax_tile_lazy:
// a relative rounding of 2^-11, against the bf16 inputs' 2^-8; sums far below fp16's 65504) and the
// weights exact; lanes pair = 0 .. 3 store blocks 2 pair and 2 pair + 1 of their rows. Quarter
// indices are below 2^27 (positions below 2^31), so the block arithmetic is 32-bit.
// Warp-uniform: call it from every lane.
template <int kCols>
__device__ __forceinline__ void write_partials(const BlockPartials& out, const NsaNumbers& nsa, const uint2* fixed,
                                               const float (&prob)[kCols / 8][4], const float (&row_max)[2],
                                               const PartialRow* rows_at, int tile, int quarter0) {
  static_assert(kCols % kQuarterKeys == 0, "whole key quarters");
  if (4LL * tile >= out.quarters) return;  // past the plan's context, which the tables cannot address
  const int lane = threadIdx.x % 32, group = lane / 4, pair = lane % 4;
  const int QB = out.quarter_blocks;
#pragma unroll
  for (int qi = 0; qi < kCols / kQuarterKeys; ++qi) {
    const int u = tile * 4 + quarter0 + qi;
    std::uint32_t a[4];
    common::c_to_a<__half>(a, prob[2 * qi], prob[2 * qi + 1]);
    for (int n0 = 0; n0 < QB; n0 += 8) {
      std::uint32_t b0, b1;
      if (fixed != nullptr) {
        const uint2 w = fixed[lane];
        b0 = w.x;
        b1 = w.y;
      } else {
        const int Bs = nsa.block_size / nsa.cmp_stride;
        quarter_weights(quarter_block_start(u, 0, Bs), n0, nsa.cmp_len / nsa.cmp_stride, Bs, b0, b1);
      }
      float sums[4] = {0.0f, 0.0f, 0.0f, 0.0f};
      mma::mma_16816<__half>(sums, a, b0, b1);
      const int j = n0 + 2 * pair;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        std::uint16_t* const row_values = rows_at[group + 8 * h].values;
        if (row_values == nullptr) continue;
        std::uint16_t* values = row_values + static_cast<long long>(u) * QB;
        if (j < QB) values[j] = __half_as_ushort(__float2half_rn(sums[2 * h]));
        if (j + 1 < QB) values[j + 1] = __half_as_ushort(__float2half_rn(sums[2 * h + 1]));
      }
    }
    if (pair == 0) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        float* const row_max_at = rows_at[group + 8 * h].max;
        if (row_max_at != nullptr) row_max_at[u] = row_max[h];
      }
    }
  }
}

}  // namespace fsa::cuda::decode
