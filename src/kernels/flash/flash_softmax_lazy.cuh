// The online softmax of flash_softmax.cuh with a lazily moved maximum, for key lists long enough
// that most tiles do not raise a row's maximum (the decode attention's compressed branch).
#pragma once

#include <cmath>

#include "kernels/flash/flash_softmax.cuh"

namespace fsa::cuda::flash {

// online_softmax_tile with a lazily moved maximum (the decode attention's long key lists): a row's
// reference maximum moves only when the tile's maximum exceeds it by more than
// kLazyRescaleLog2 (log2 domain), and the accumulators are rescaled only when some row of the
// warp moved (a warp vote). After the first tiles of a long list almost no tile moves it, so the
// tile's chain loses its 2 x kAccCols / 8 multiplies and their wait on the correction's ex2. The
// result is exact for any reference at or below the true maximum (the output, the sum and
// lse = max ln 2 + ln(sum) all refer to it); the probabilities are then at most 2^kLazyRescaleLog2
// (256), which 16-bit P for the P V product and the fp32 sums hold with the same relative rounding.
constexpr float kLazyRescaleLog2 = 8.0f;
template <bool kMasked, int kKeys, int kAccCols, class Visible>
__device__ __forceinline__ void online_softmax_tile_lazy(float (&s)[kKeys / 8][4], float (&acc)[kAccCols / 8][4],
                                                         float (&row_max)[2], float (&row_sum)[2], float scale_log2,
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
  float correction[2], base[2];
  bool moved = false;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    tile_max[h] = fmaxf(tile_max[h], __shfl_xor_sync(0xffffffffu, tile_max[h], 1));
    tile_max[h] = fmaxf(tile_max[h], __shfl_xor_sync(0xffffffffu, tile_max[h], 2));
    const float top = tile_max[h] * scale_log2;
    // A row that has seen no key keeps max -inf (top -inf is not above it): nothing to rescale, and
    // its masked scores (-inf) give 0 with base 0. A first finite top always moves it (correction
    // 2^-inf = 0 of sums and outputs that are 0).
    correction[h] = 1.0f;
    if (top > row_max[h] + kLazyRescaleLog2) {
      correction[h] = fast_exp2(row_max[h] - top);
      row_max[h] = top;
      moved = true;
    }
    base[h] = row_max[h] == -INFINITY ? 0.0f : row_max[h];
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
    tile_sum[h] += __shfl_xor_sync(0xffffffffu, tile_sum[h], 1);
    tile_sum[h] += __shfl_xor_sync(0xffffffffu, tile_sum[h], 2);
    row_sum[h] = row_sum[h] * correction[h] + tile_sum[h];
  }
  if (__any_sync(0xffffffffu, moved)) rescale_rows<kAccCols>(acc, correction);
}

}  // namespace fsa::cuda::flash
