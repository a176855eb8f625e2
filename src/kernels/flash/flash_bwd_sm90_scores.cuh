// The softmax step of the Hopper (wgmma) attention backwards, shared by the masked flash-attention
// kernel (flash_bwd_sm90_kernel.cuh) and selected attention's (slc_attn/slc_bwd_sm90_kernel.cuh):
// from a warpgroup's S^T and dP^T accumulators (keys x chunk rows) to P^T and dS^T in place, with
// dS^T also stored to shared memory for the dQ product.
#pragma once

#include <cstdint>

#include "kernels/common/fast_exp.cuh"
#include "kernels/common/mma_sm80.cuh"
#include "kernels/common/warp_tile_mma.cuh"
#include "kernels/common/wgmma_sm90.cuh"
#include "kernels/flash/flash_bwd_chunk.cuh"

namespace fsa::cuda::flash {

// P^T = exp2(scale_log2 S^T - lse) (zero outside each row's key interval [lo, hi) when kMasked) into
// st, dS^T = P^T (dP^T - delta) into dpt. Element e of tile j is key `key` + 8 (e / 2) (numbered like
// the rows' intervals; `key` = this thread's first: the warp's first key + lane / 4) and row
// 8j + 2 (lane % 4) + (e & 1). dS^T goes to `ds`, a 128-byte-swizzled [kDsKeys][kRows] tile, at
// key row `ds_key` + 8 (e / 2) (rows r, r + 1 share a 4-byte word).
template <bool kMasked, int kDsKeys, class Element, int kRows>
__device__ __forceinline__ void bwd_scores_sm90(float (&st)[kRows / 8][4], float (&dpt)[kRows / 8][4],
                                                const BwdRowTable<kRows>& rows, int key, int ds_key,
                                                float scale_log2, unsigned char* ds) {
  const int pair = threadIdx.x % 4;
#pragma unroll
  for (int j = 0; j < kRows / 8; ++j) {
    const int r = j * 8 + 2 * pair;
    const float2 lse = *reinterpret_cast<const float2*>(&rows.lse[r]);
    const float2 delta = *reinterpret_cast<const float2*>(&rows.delta[r]);
    int2 lo{}, hi{};
    if constexpr (kMasked) {
      lo = *reinterpret_cast<const int2*>(&rows.lo[r]);
      hi = *reinterpret_cast<const int2*>(&rows.hi[r]);
    }
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const bool second = (e & 1) != 0;
      float pt = common::fast_exp2(fmaf(st[j][e], scale_log2, -(second ? lse.y : lse.x)));
      if constexpr (kMasked) {
        const int k = key + 8 * (e / 2);
        pt = k >= (second ? lo.y : lo.x) && k < (second ? hi.y : hi.x) ? pt : 0.0f;
      }
      st[j][e] = pt;
      dpt[j][e] = pt * (dpt[j][e] - (second ? delta.y : delta.x));
    }
#pragma unroll
    for (int h = 0; h < 2; ++h)
      *reinterpret_cast<std::uint32_t*>(ds + wgmma::swizzled_offset(kDsKeys, ds_key + 8 * h, j * 8) + 4 * pair) =
          mma::pack2<Element>(dpt[j][2 * h], dpt[j][2 * h + 1]);
  }
}

// The A operands of dV += P^T dO and dK += dS^T Q: the accumulators' C -> A conversion, 16 rows per k step.
template <class Element, int kRows>
__device__ __forceinline__ void bwd_operands_sm90(std::uint32_t (&pa)[kRows / 16][4],
                                                  std::uint32_t (&da)[kRows / 16][4], const float (&st)[kRows / 8][4],
                                                  const float (&dpt)[kRows / 8][4]) {
#pragma unroll
  for (int kk = 0; kk < kRows / 16; ++kk) {
    common::c_to_a<Element>(pa[kk], st[2 * kk], st[2 * kk + 1]);
    common::c_to_a<Element>(da[kk], dpt[2 * kk], dpt[2 * kk + 1]);
  }
}

}  // namespace fsa::cuda::flash
