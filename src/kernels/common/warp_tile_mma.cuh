// One warp's share of a tile GEMM on tensor cores: acc (16 rows x kN columns, fp32 mma.sync C
// fragments) += A (16 x kK) * B (kK x kN) with both operands in shared memory. The four operand
// orientations the kernels meet are template flags; the ldmatrix addressing of each is the one of
// the selected-attention kernels (verified on sm90): A row-major as Q in S = Q K^T, B stored
// [n][k] as K there, B stored [k][n] as V in O = P V. A stored [k][m] (transposed) uses the
// transposing ldmatrix: matrix q of the x4 holds A rows 8*(q%2).., k 8*(q/2).. (the a0..a3 order of
// mma_sm80.cuh), i.e. stored rows k0 + 8*(q/2) + lane%8 at column m0 + 8*(q%2).
#pragma once

#include <cstdint>

#include "kernels/common/mma_sm80.cuh"

namespace fsa::cuda::common {

template <int kN>
__device__ __forceinline__ void zero_acc(float (&acc)[kN / 8][4]) {
#pragma unroll
  for (int n = 0; n < kN / 8; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
}

// a: A rows row0.. of a [m][k] tile (or, kATransposed, columns row0.. of a [k][m] tile), leading
// dimension lda. b: columns col0.. of a [k][n] tile (kBKMajor) or rows col0.. of an [n][k] tile.
template <class Element, int kK, int kN, bool kATransposed, bool kBKMajor, int kUnroll = kK / 16>
__device__ __forceinline__ void warp_tile_mma(float (&acc)[kN / 8][4], const Element* a, int lda, int row0,
                                              const Element* b, int ldb, int col0) {
  static_assert(kK % 16 == 0 && kN % 16 == 0, "k steps of 16, column tiles in pairs");
  const int lane = threadIdx.x % 32;
#pragma unroll kUnroll
  for (int k0 = 0; k0 < kK; k0 += 16) {
    std::uint32_t af[4];
    if constexpr (kATransposed) {
      mma::ldmatrix_x4_trans(af, a + (k0 + lane % 8 + (lane / 16) * 8) * lda + row0 + ((lane / 8) % 2) * 8);
    } else {
      mma::ldmatrix_x4(af, a + (row0 + lane % 16) * lda + k0 + (lane / 16) * 8);
    }
#pragma unroll
    for (int n = 0; n < kN / 8; n += 2) {
      std::uint32_t bf[4];
      if constexpr (kBKMajor) {
        mma::ldmatrix_x4_trans(bf, b + (k0 + lane % 8 + ((lane / 8) % 2) * 8) * ldb + col0 + n * 8 + (lane / 16) * 8);
      } else {
        mma::ldmatrix_x4(bf, b + (col0 + n * 8 + lane % 8 + (lane / 16) * 8) * ldb + k0 + ((lane / 8) % 2) * 8);
      }
      mma::mma_16816<Element>(acc[n], af, bf[0], bf[1]);
      mma::mma_16816<Element>(acc[n + 1], af, bf[2], bf[3]);
    }
  }
}

// The A fragment of k = 16*kk .. 16*kk + 15 taken from C fragments whose columns are that k range:
// C tiles 2kk and 2kk + 1 (columns 8 each) are exactly a0/a1 and a2/a3 (mma_sm80.cuh layouts).
// scale_lo / scale_hi multiply rows `group` and `group + 8`.
template <class Element>
__device__ __forceinline__ void c_to_a(std::uint32_t (&a)[4], const float (&c0)[4], const float (&c1)[4],
                                       float scale_lo = 1.0f, float scale_hi = 1.0f) {
  a[0] = mma::pack2<Element>(c0[0] * scale_lo, c0[1] * scale_lo);
  a[1] = mma::pack2<Element>(c0[2] * scale_hi, c0[3] * scale_hi);
  a[2] = mma::pack2<Element>(c1[0] * scale_lo, c1[1] * scale_lo);
  a[3] = mma::pack2<Element>(c1[2] * scale_hi, c1[3] * scale_hi);
}

// acc += P V for one warp's 16 rows: P the probabilities of kKeys keys in C-fragment layout (as
// the softmax leaves the scores), rows scaled by scale_lo / scale_hi (c_to_a); V kKeys rows in
// shared memory (leading dimension ldv), output columns col0 .. col0 + kCols. The O = P V step of
// the flash forward, the decode attention and the selected-attention forward.
template <class Element, int kKeys, int kCols>
__device__ __forceinline__ void warp_pv_mma(float (&acc)[kCols / 8][4], const float (&p)[kKeys / 8][4],
                                            const Element* v_s, int ldv, int col0, float scale_lo = 1.0f,
                                            float scale_hi = 1.0f) {
  static_assert(kKeys % 16 == 0 && kCols % 16 == 0, "k steps of 16, column tiles in pairs");
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int kk = 0; kk < kKeys / 16; ++kk) {
    std::uint32_t a[4];
    c_to_a<Element>(a, p[2 * kk], p[2 * kk + 1], scale_lo, scale_hi);
#pragma unroll
    for (int n = 0; n < kCols / 8; n += 2) {
      std::uint32_t b[4];
      mma::ldmatrix_x4_trans(b, v_s + (kk * 16 + lane % 8 + ((lane / 8) % 2) * 8) * ldv + col0 + n * 8 + (lane / 16) * 8);
      mma::mma_16816<Element>(acc[n], a, b[0], b[1]);
      mma::mma_16816<Element>(acc[n + 1], a, b[2], b[3]);
    }
  }
}

}  // namespace fsa::cuda::common
