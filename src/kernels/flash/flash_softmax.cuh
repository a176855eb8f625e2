// The online softmax of the flash-attention forward for one warp's 16 query rows and one tile of
// keys, on mma.sync m16n8 C fragments (thread: rows group and group + 8 as h = 0 / 1, columns
// 2*pair, 2*pair + 1 of each 8-column tile). Scores are taken to the log2 domain (times
// scale * log2(e)) so that every exponential is one ex2; the row maximum is kept in that domain,
// and lse = max * ln 2 + ln(sum).
#pragma once

#include <cmath>

#include "kernels/common/fast_exp.cuh"

namespace fsa::cuda::flash {

using common::fast_exp2;
using common::kLog2e;

// kLazy (the decode attention's long key lists): a row's reference maximum moves only when a
// tile's maximum exceeds it by more than kLazyRescaleLog2 (log2 domain), so that after the first
// tiles of a long list almost no tile moves it and its accumulators need no rescale
// (online_softmax_tile_lazy). The result is exact for any reference at or below the true maximum
// (the output, the sum and lse = max ln 2 + ln(sum) all refer to it); the probabilities are then at
// most 2^kLazyRescaleLog2 (256), which a 16-bit P and the fp32 sums hold with the same relative
// rounding.
constexpr float kLazyRescaleLog2 = 8.0f;

// s: raw scores q.k of the tile (in), unnormalised probabilities 2^(x * scale_log2 - max) (out).
// kMasked: visible(h, column) says whether row h sees the key of that column of the tile (others
// count as -inf). row_max / row_sum move to the new maximum (kLazy: above); correction[h] is the
// factor by which the row's output accumulators must be rescaled (rescale_rows); returns whether
// a row of this thread moved its maximum. A row that has seen no key yet keeps max = -inf and
// sum = 0. The maximum is taken on raw scores (scale_log2 > 0, as the API guarantees) so that each
// probability costs one FFMA and one ex2.
template <bool kMasked, int kKeys, bool kLazy = false, class Visible>
__device__ __forceinline__ bool online_softmax_scores(float (&s)[kKeys / 8][4], float (&row_max)[2],
                                                      float (&row_sum)[2], float (&correction)[2], float scale_log2,
                                                      Visible visible) {
  const int pair = threadIdx.x % 4;
  float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
  for (int j = 0; j < kKeys / 8; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      if constexpr (kMasked) s[j][e] = visible(e / 2, j * 8 + 2 * pair + (e & 1)) ? s[j][e] : -INFINITY;
      tile_max[e / 2] = fmaxf(tile_max[e / 2], s[j][e]);
    }
  float base[2];
  bool moved = false;
  if constexpr (kLazy) {
    // A row's maximum moves only past its reference + kLazyRescaleLog2, which no lane's own scores
    // reach in most tiles of a long list: the quad's maximum (two shuffles a row) is taken only
    // when some lane of the warp sees such a score (a vote), and then decides as before, so the
    // reference and the probabilities are the same bits as with the quad's maximum every tile.
    bool past = false;
#pragma unroll
    for (int h = 0; h < 2; ++h) past |= tile_max[h] * scale_log2 > row_max[h] + kLazyRescaleLog2;
    correction[0] = correction[1] = 1.0f;
    if (__any_sync(0xffffffffu, past)) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        tile_max[h] = fmaxf(tile_max[h], __shfl_xor_sync(0xffffffffu, tile_max[h], 1));
        tile_max[h] = fmaxf(tile_max[h], __shfl_xor_sync(0xffffffffu, tile_max[h], 2));
        // top -inf (nothing visible yet) is not above a max of -inf: the row keeps it; a first
        // finite top always moves it (correction 2^-inf = 0 of sums and outputs that are 0).
        const float top = tile_max[h] * scale_log2;
        if (top > row_max[h] + kLazyRescaleLog2) {
          correction[h] = fast_exp2(row_max[h] - top);
          row_max[h] = top;
          moved = true;
        }
      }
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) base[h] = row_max[h] == -INFINITY ? 0.0f : row_max[h];
  } else {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      tile_max[h] = fmaxf(tile_max[h], __shfl_xor_sync(0xffffffffu, tile_max[h], 1));
      tile_max[h] = fmaxf(tile_max[h], __shfl_xor_sync(0xffffffffu, tile_max[h], 2));
      const float new_max = fmaxf(row_max[h], tile_max[h] * scale_log2);
      // A row that has seen no key yet keeps max -inf: nothing to rescale (its sums are 0), and its
      // masked scores (-inf) must give 0, not exp(-inf + inf).
      correction[h] = new_max == -INFINITY ? 1.0f : fast_exp2(row_max[h] - new_max);
      base[h] = new_max == -INFINITY ? 0.0f : new_max;
      row_max[h] = new_max;
      moved = true;
    }
  }
  float tile_sum[2] = {0.0f, 0.0f};
#pragma unroll
  for (int j = 0; j < kKeys / 8; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      s[j][e] = fast_exp2(fmaf(s[j][e], scale_log2, -base[e / 2]));
      tile_sum[e / 2] += s[j][e];
    }
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    if constexpr (!kLazy) {  // kLazy: the thread's own columns' sum, summed over the quad at the end
      tile_sum[h] += __shfl_xor_sync(0xffffffffu, tile_sum[h], 1);
      tile_sum[h] += __shfl_xor_sync(0xffffffffu, tile_sum[h], 2);
    }
    row_sum[h] = row_sum[h] * correction[h] + tile_sum[h];
  }
  return moved;
}

// The row sums a lazy online softmax kept per thread (its columns), summed over the row's quad.
__device__ __forceinline__ void quad_row_sums(float (&row_sum)[2]) {
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    row_sum[h] += __shfl_xor_sync(0xffffffffu, row_sum[h], 1);
    row_sum[h] += __shfl_xor_sync(0xffffffffu, row_sum[h], 2);
  }
}

// Rows group / group + 8 of C fragments times correction[0] / [1].
template <int kCols>
__device__ __forceinline__ void rescale_rows(float (&acc)[kCols / 8][4], const float (&correction)[2]) {
#pragma unroll
  for (int n = 0; n < kCols / 8; ++n) {
    acc[n][0] *= correction[0];
    acc[n][1] *= correction[0];
    acc[n][2] *= correction[1];
    acc[n][3] *= correction[1];
  }
}

// online_softmax_scores, then the output accumulators rescaled at once.
template <bool kMasked, int kKeys, int kAccCols, class Visible>
__device__ __forceinline__ void online_softmax_tile(float (&s)[kKeys / 8][4], float (&acc)[kAccCols / 8][4],
                                                    float (&row_max)[2], float (&row_sum)[2], float scale_log2,
                                                    Visible visible) {
  float correction[2];
  online_softmax_scores<kMasked, kKeys>(s, row_max, row_sum, correction, scale_log2, visible);
  rescale_rows<kAccCols>(acc, correction);
}

// online_softmax_scores with the lazy maximum, then the output accumulators rescaled only where a
// row of the warp moved its maximum (a vote: the 2 x kAccCols / 8 multiplies and their wait on the
// correction's ex2 leave the tile's chain). row_sum is each thread's sum over its own columns (no
// shuffles a tile): quad_row_sums gives the rows' sums after the last tile.
template <bool kMasked, int kKeys, int kAccCols, class Visible>
__device__ __forceinline__ void online_softmax_tile_lazy(float (&s)[kKeys / 8][4], float (&acc)[kAccCols / 8][4],
                                                         float (&row_max)[2], float (&row_sum)[2], float scale_log2,
                                                         Visible visible) {
  float correction[2];
  const bool moved = online_softmax_scores<kMasked, kKeys, true>(s, row_max, row_sum, correction, scale_log2, visible);
  if (__any_sync(0xffffffffu, moved)) rescale_rows<kAccCols>(acc, correction);
}

// Natural-log lse of a row from its log2-domain maximum and its sum; -inf for a row that saw nothing.
__device__ __forceinline__ float row_lse(float row_max, float row_sum) {
  return row_sum > 0.0f ? row_max * 0.69314718055994531f + logf(row_sum) : -INFINITY;
}

}  // namespace fsa::cuda::flash
