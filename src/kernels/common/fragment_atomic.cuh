// fp32 atomic accumulation (or stores) of mma.sync m16n8 C fragments into a row-major global
// matrix, 16 bytes per access: the two lanes of a quad pair (pair p, p ^ 1) swap half of their values with one
// shuffle so that each holds four consecutive columns (even pair: columns 2p..2p+3 of tile n; odd
// pair: columns 2(p-1)..2p+1 of tile n + 1). A warp instruction then covers 8 rows x 16 columns in
// whole 32-byte sectors, where per-float atomics would issue 4x the instructions and touch every
// sector half-used. sm_90 has 16-byte atomics (red.global.add.v4.f32); older targets add 4 floats.
#pragma once

#include <cuda_runtime.h>

#include "kernels/common/mma_sm80.cuh"

namespace fsa::cuda::common {

// address[0..4) += value where `active`: on sm_90 one predicated 16-byte reduction (no branch
// around it), on older targets four float atomics.
__device__ __forceinline__ void atomic_add4_if(float* address, float4 value, bool active) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %5, 0;\n"
      "@p red.relaxed.gpu.global.add.v4.f32 [%0], {%1, %2, %3, %4};\n}\n" ::"l"(address),
      "f"(value.x), "f"(value.y), "f"(value.z), "f"(value.w), "r"(static_cast<int>(active))
      : "memory");
#else
  if (active) {
    atomicAdd(address, value.x);
    atomicAdd(address + 1, value.y);
    atomicAdd(address + 2, value.z);
    atomicAdd(address + 3, value.w);
  }
#endif
}

// Calls write(column, value) with scale * four consecutive columns of row half h of the fragment's
// first kN columns (this thread's row group + 8 * h), covering the row once over the quad. Every
// lane of the warp must call it (shuffles).
template <int kN, int kTiles, class Write>
__device__ __forceinline__ void for_fragment_row_quads(const float (&acc)[kTiles][4], int h, float scale,
                                                       Write write) {
  static_assert(kN % 16 == 0 && kN <= kTiles * 8, "column tiles go in pairs, within the fragment");
  const int pair = threadIdx.x % 4;
  const bool odd = (pair & 1) != 0;
  // This lane's first column: 2p (even pair, tile n) or 2(p - 1) + 8 (odd pair, tile n + 1), then
  // 16 more per pair of tiles (constant offsets from one address).
  const int first_column = odd ? 2 * pair + 6 : 2 * pair;
#pragma unroll
  for (int n = 0; n < kN / 8; n += 2) {
    const float send0 = odd ? acc[n][2 * h] : acc[n + 1][2 * h];
    const float send1 = odd ? acc[n][2 * h + 1] : acc[n + 1][2 * h + 1];
    const float recv0 = __shfl_xor_sync(0xffffffffu, send0, 1);
    const float recv1 = __shfl_xor_sync(0xffffffffu, send1, 1);
    float4 value = odd ? make_float4(recv0, recv1, acc[n + 1][2 * h], acc[n + 1][2 * h + 1])
                       : make_float4(acc[n][2 * h], acc[n][2 * h + 1], recv0, recv1);
    const int column = first_column + n * 8;
    value.x *= scale;
    value.y *= scale;
    value.z *= scale;
    value.w *= scale;
    write(column, value);
  }
}

// Adds scale * (row half h of the fragment's first kN columns) to row[0 .. kN) where `row` points
// at that row's first column, 16-byte aligned. `active` = false skips the atomics of this thread's
// row (both lanes of a pair share the row, so they agree).
template <int kN, int kTiles>
__device__ __forceinline__ void atomic_add_fragment_row(float* row, const float (&acc)[kTiles][4], int h, float scale,
                                                        bool active) {
  for_fragment_row_quads<kN>(acc, h, scale,
                             [&](int column, float4 value) { atomic_add4_if(row + column, value, active); });
}

// The same as plain 16-byte stores, for rows with a single writer (deterministic partials).
template <int kN, int kTiles>
__device__ __forceinline__ void store_fragment_row(float* row, const float (&acc)[kTiles][4], int h, float scale,
                                                   bool active) {
  for_fragment_row_quads<kN>(acc, h, scale, [&](int column, float4 value) {
    if (active) *reinterpret_cast<float4*>(row + column) = value;
  });
}

// The same as plain 8-byte stores of four values converted to Element (16-bit), for rows with a
// single writer; `row` is 8-byte aligned.
template <class Element, int kN, int kTiles>
__device__ __forceinline__ void store_fragment_row_as(Element* row, const float (&acc)[kTiles][4], int h,
                                                      float scale, bool active) {
  for_fragment_row_quads<kN>(acc, h, scale, [&](int column, float4 value) {
    if (active)
      *reinterpret_cast<uint2*>(row + column) =
          make_uint2(mma::pack2<Element>(value.x, value.y), mma::pack2<Element>(value.z, value.w));
  });
}

}  // namespace fsa::cuda::common
