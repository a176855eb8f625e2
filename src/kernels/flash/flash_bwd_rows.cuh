// The row-wise kernels around the masked flash-attention backward: delta = rowsum(o * d_o) before
// it, and the conversion of the fp32 accumulators into dq / dk / dv after it. The device functions
// take plain pointers and strides: the selected-attention backward's row kernels use them too.
#pragma once

#include <algorithm>

#include "kernels/common/convert.cuh"
#include "kernels/common/mma_sm80.cuh"
#include "kernels/flash/flash_params.hpp"

namespace fsa::cuda::flash {

constexpr int kRowThreads = 256;
constexpr long long kMaxRowCtas = 1 << 16;

inline unsigned row_ctas(long long threads) {
  return static_cast<unsigned>(std::max(1LL, std::min(kMaxRowCtas, (threads + kRowThreads - 1) / kRowThreads)));
}

// delta[h, t] = sum_d o[t, h, d] * d_o[t, h, d] in fp32 (delta [heads, tokens] contiguous), one warp
// per (token, head), grid-stride over kRowThreads-thread CTAs.
template <class Element, int kDv>
__device__ __forceinline__ void delta_rows(const void* o_base, std::int64_t o_token_stride, std::int64_t o_head_stride,
                                           const void* do_base, std::int64_t do_token_stride,
                                           std::int64_t do_head_stride, long long tokens, int heads, float* delta) {
  using Cvt = common::Convert<Element>;
  const long long rows = tokens * heads;
  const long long warps = static_cast<long long>(gridDim.x) * (kRowThreads / 32);
  const int lane = threadIdx.x % 32;
  for (long long row = (static_cast<long long>(blockIdx.x) * kRowThreads + threadIdx.x) / 32; row < rows;
       row += warps) {
    const long long t = row / heads;
    const int h = static_cast<int>(row % heads);
    const auto* o = static_cast<const Element*>(o_base) + t * o_token_stride + h * o_head_stride;
    const auto* d_o = static_cast<const Element*>(do_base) + t * do_token_stride + h * do_head_stride;
    float sum = 0.0f;
    for (int d = lane; d < kDv; d += 32) sum += Cvt::to_float(o[d]) * Cvt::to_float(d_o[d]);
#pragma unroll
    for (int mask = 16; mask > 0; mask /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, mask);
    if (lane == 0) delta[h * tokens + t] = sum;
  }
}

template <class Element, int kDv>
__global__ void __launch_bounds__(kRowThreads) flash_bwd_delta_kernel(const __grid_constant__ FlashParams p) {
  delta_rows<Element, kDv>(p.o, p.o_token_stride, p.o_head_stride, p.d_o, p.do_token_stride, p.do_head_stride,
                           p.tokens, p.heads_q, p.delta);
}

// Four fp32 values into the input dtype at dst (8 bytes, 8-byte aligned).
template <class Element>
__device__ __forceinline__ void store4(Element* dst, float4 x) {
  *reinterpret_cast<uint2*>(dst) = make_uint2(mma::pack2<Element>(x.x, x.y), mma::pack2<Element>(x.z, x.w));
}

// One fp32 accumulator [rows, heads, dim] (contiguous) into a strided tensor of the input dtype,
// four elements (8 bytes: strides are multiples of 16 bytes) per step.
template <class Element, int kDim>
__device__ __forceinline__ void convert_rows(const float* accum, void* out, std::int64_t row_stride,
                                             std::int64_t head_stride, long long rows, int heads, long long first,
                                             long long step) {
  static_assert(kDim % 4 == 0, "four columns per step");
  const long long count = rows * heads * (kDim / 4);
  for (long long idx = first; idx < count; idx += step) {
    const long long row_head = idx / (kDim / 4);
    const int d = static_cast<int>(idx % (kDim / 4)) * 4;
    const long long row = row_head / heads;
    const int h = static_cast<int>(row_head % heads);
    store4(static_cast<Element*>(out) + row * row_stride + h * head_stride + d,
           *reinterpret_cast<const float4*>(accum + row_head * kDim + d));
  }
}

// blockIdx.y = 0: dq; 1: dk; 2: dv. Key rows no tile reached (past key_base[nseq]) were never
// added to and come out as zeros.
template <class Element, int kDqk, int kDv>
__global__ void __launch_bounds__(kRowThreads) flash_bwd_finish_kernel(const __grid_constant__ FlashParams p) {
  const long long step = static_cast<long long>(gridDim.x) * kRowThreads;
  const long long first = static_cast<long long>(blockIdx.x) * kRowThreads + threadIdx.x;
  if (blockIdx.y == 0)
    convert_rows<Element, kDqk>(p.dq_accum, p.dq, p.dq_token_stride, p.dq_head_stride, p.tokens, p.heads_q, first,
                                step);
  else if (blockIdx.y == 1)
    convert_rows<Element, kDqk>(p.dk_accum, p.dk, p.dk_row_stride, p.dk_head_stride, p.key_rows, p.heads_kv, first,
                                step);
  else
    convert_rows<Element, kDv>(p.dv_accum, p.dv, p.dv_row_stride, p.dv_head_stride, p.key_rows, p.heads_kv, first,
                               step);
}

}  // namespace fsa::cuda::flash
