// Phase A of the fused block selection (select_kernel.cuh): S = Q K~^T of the CTA's query rows
// against one tile of compressed keys, by mma.sync (qk_tiles) or wgmma (qk_wgmma, sm_90a), and the
// probabilities p = exp2(S * scale * log2 e - lse * log2 e) in place (to_probs).
#pragma once

#include <cstdint>

#include "kernels/common/fast_exp.cuh"
#include "kernels/common/mma_sm80.cuh"
#include "kernels/common/wgmma_sm90.cuh"
#include "kernels/select/select_tiling.hpp"

namespace fsa::cuda::sel {

using common::fast_exp2;

// S for one or two m-tiles (q0, q1: their first rows) against the 64 keys of a K stage; the two
// m-tiles share each B fragment.
template <class Element, int kDqk, bool kTwo>
__device__ __forceinline__ void qk_tiles(float (&acc0)[kKeys / 8][4], float (&acc1)[kKeys / 8][4], const Element* q0,
                                         const Element* q1, const Element* k_s) {
  constexpr int kLd = kDqk + kPadHalf;
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int n = 0; n < kKeys / 8; ++n)
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      acc0[n][c] = 0.0f;
      if constexpr (kTwo) acc1[n][c] = 0.0f;
    }
  const Element* a0 = q0 + (lane % 16) * kLd + (lane / 16) * 8;
  const Element* a1 = q1 + (lane % 16) * kLd + (lane / 16) * 8;
  const Element* b = k_s + (lane % 8 + (lane / 16) * 8) * kLd + ((lane / 8) % 2) * 8;
#pragma unroll 2
  for (int k0 = 0; k0 < kDqk; k0 += 16) {
    std::uint32_t af0[4], af1[4];
    mma::ldmatrix_x4(af0, a0 + k0);
    if constexpr (kTwo) mma::ldmatrix_x4(af1, a1 + k0);
#pragma unroll
    for (int n = 0; n < kKeys / 8; n += 2) {
      std::uint32_t bf[4];
      mma::ldmatrix_x4(bf, b + n * 8 * kLd + k0);
      mma::mma_16816<Element>(acc0[n], af0, bf[0], bf[1]);
      mma::mma_16816<Element>(acc0[n + 1], af0, bf[2], bf[3]);
      if constexpr (kTwo) {
        mma::mma_16816<Element>(acc1[n], af1, bf[0], bf[1]);
        mma::mma_16816<Element>(acc1[n + 1], af1, bf[2], bf[3]);
      }
    }
  }
}

// S of the 64 rows from `first_row` of the swizzled Q tile (q_rows rows: this warpgroup's four
// m-tiles of a round, 16 rows per warp) against the 64 keys of the swizzled K stage, by wgmma
// (sm_90a): the accumulators have qk_tiles' layout (wgmma_sm90.cuh). All 4 warps of the group take
// part; the shared operands were fenced (fence_async_shared) and synchronised by the caller.
// qk_wgmma_issue issues the products as one wgmma group and returns; the caller waits for it
// (wgmma::wait_group, then fence_operands) before reading acc.
template <class Element, int kDqk>
__device__ __forceinline__ void qk_wgmma_issue(float (&acc)[kKeys / 8][4], const Element* q_s, int q_rows,
                                               int first_row, const Element* k_s) {
  constexpr std::uint32_t kGroupBytes = 8 * wgmma::kPanelRowBytes;  // 8-row groups (K-major operands)
  // With first_row visibly warp-uniform (the caller's warpgroup index comes through a shuffle), the
  // compiler builds the steps' descriptors in uniform registers, a few uniform instructions a step.
  // Above Dqk = 128 the addresses pass through an opaque move that keeps the descriptors per call:
  // before the shuffle the compiler hoisted all steps' descriptors out of the tile loop there and
  // spilled them (116 B at Dqk = 256). With the shuffle, ptxas reports no spill without the move
  // (110 / 111 registers at Dqk = 192 / 256); dropping it is not yet measured on the device.
  std::uint32_t q_address = mma::shared_address(q_s) + first_row * wgmma::kPanelRowBytes;
  std::uint32_t k_address = mma::shared_address(k_s);
  if constexpr (kDqk > 128) {
    asm volatile("mov.u32 %0, %0;" : "+r"(q_address));
    asm volatile("mov.u32 %0, %0;" : "+r"(k_address));
  }
  const std::uint64_t q_desc = wgmma::descriptor_at(q_address, 0, kGroupBytes);
  const std::uint64_t k_desc = wgmma::descriptor_at(k_address, 0, kGroupBytes);
  // k step kk of 16 columns: panel kk / 4 (panels of rows x 128 bytes), 32 bytes per step within it.
  auto step = [](int rows, int kk) {
    return static_cast<std::uint32_t>((kk / 4) * rows * wgmma::kPanelRowBytes + (kk % 4) * 32);
  };
  wgmma::fence();
#pragma unroll
  for (int kk = 0; kk < kDqk / 16; ++kk)
    wgmma::mma_ss<Element, kKeys, 0>(acc, wgmma::advance(q_desc, step(q_rows, kk)),
                                     wgmma::advance(k_desc, step(kKeys, kk)), kk > 0);
  wgmma::commit_group();
}
template <class Element, int kDqk>
__device__ __forceinline__ void qk_wgmma(float (&acc)[kKeys / 8][4], const Element* q_s, int q_rows, int first_row,
                                         const Element* k_s) {
  qk_wgmma_issue<Element, kDqk>(acc, q_s, q_rows, first_row, k_s);
  wgmma::wait_group<0>();
  wgmma::fence_operands<kKeys>(acc);
}

// p = exp2(S * scale * log2 e - bias) of one m-tile's S fragment in place: rows `group` (bias_lo)
// and `group + 8` (bias_hi), keys 8n + 2 pair + e. kMasked: keys at or past limit_lo / limit_hi
// (visible count - key0) give 0.
template <bool kMasked>
__device__ __forceinline__ void to_probs(float (&acc)[kKeys / 8][4], float scale_log2, float bias_lo, float bias_hi,
                                         int limit_lo, int limit_hi) {
  const int pair = threadIdx.x % 4;
#pragma unroll
  for (int n = 0; n < kKeys / 8; ++n)
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      float p_lo = fast_exp2(fmaf(acc[n][e], scale_log2, -bias_lo));
      float p_hi = fast_exp2(fmaf(acc[n][2 + e], scale_log2, -bias_hi));
      if constexpr (kMasked) {
        const int key = n * 8 + 2 * pair + e;
        p_lo = key < limit_lo ? p_lo : 0.0f;
        p_hi = key < limit_hi ? p_hi : 0.0f;
      }
      acc[n][e] = p_lo;
      acc[n][2 + e] = p_hi;
    }
}

}  // namespace fsa::cuda::sel
