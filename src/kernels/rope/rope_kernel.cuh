// RoPE (GPT-NeoX rotate-half) over [rows, H, D]. One CTA per row: thread 0 finds the row's
// sequence by binary search over cu, then the threads rotate the row's H * D/2 pairs. Angles are
// fp32 as in the reference; elements are converted to fp32, rotated and rounded back once.
// Paired layout (the common case, p.paired): a thread takes two neighbouring pairs (4-byte
// loads and stores) for a subset of the heads, so each angle's sincosf is computed once per row
// and thread, not once per head (it was 16x redundant for 16 query heads, and the kernel ran at
// ~3.5x its memory floor).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <cstring>

#include "cuda/runtime.hpp"
#include "kernels/rope/rope_params.hpp"

namespace fsa::cuda {

template <class Element>
struct ElementTraits;
template <>
struct ElementTraits<__nv_bfloat16> {
  static __device__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
  static __device__ __nv_bfloat16 from_float(float x) { return __float2bfloat16_rn(x); }
};
template <>
struct ElementTraits<__half> {
  static __device__ float to_float(__half x) { return __half2float(x); }
  static __device__ __half from_float(float x) { return __float2half_rn(x); }
};

constexpr int kRopeThreads = 128;

template <class Element>
__global__ void __launch_bounds__(kRopeThreads) rope_kernel(const __grid_constant__ RopeParams p) {
  using Traits = ElementTraits<Element>;
  __shared__ long long position;
  __shared__ bool rotate;
  const long long row = blockIdx.x;
  if (threadIdx.x == 0) {
    // Spare rows past the last sequence (compressed tensors are sized by an upper bound) are
    // copied unchanged, like the reference does.
    rotate = row < p.cu[p.num_seqs * p.cu_stride];
    int lo = 0, hi = p.num_seqs - 1;  // last sequence b with cu[b] <= row
    while (lo < hi) {
      const int mid = (lo + hi + 1) / 2;
      if (p.cu[mid * p.cu_stride] <= row) lo = mid; else hi = mid - 1;
    }
    position = (row - p.cu[lo * p.cu_stride]) * p.position_stride;
  }
  __syncthreads();
  const auto* x = static_cast<const Element*>(p.x) + row * p.x_row_stride;
  auto* y = static_cast<Element*>(p.y) + row * p.y_row_stride;
  // Accurate sincosf, not __sincosf: angles reach position * w ~ 1e5-1e6 rad on long sequences.
  // Its argument reduction for such angles is what ptxas reports as a 32-byte stack frame.
  auto angle = [&](int i, float& sin_a, float& cos_a) {
    sin_a = 0.0f;
    cos_a = 1.0f;
    if (rotate) sincosf(static_cast<float>(position) * p.frequency[i], &sin_a, &cos_a);
    sin_a *= p.sign;
  };
  if (p.paired) {
    const int half = p.pairs / 2;  // threads per head: pairs 2t, 2t + 1
    const int head_step = max(1, kRopeThreads / half);
    if (threadIdx.x >= half * head_step) return;
    const int i = 2 * (threadIdx.x % half);
    float sin0, cos0, sin1, cos1;
    angle(i, sin0, cos0);
    angle(i + 1, sin1, cos1);
    auto unpack = [](std::uint32_t v, float& lo, float& hi) {
      Element e[2];
      memcpy(e, &v, 4);
      lo = Traits::to_float(e[0]);
      hi = Traits::to_float(e[1]);
    };
    auto pack = [](float lo, float hi) {
      const Element e[2] = {Traits::from_float(lo), Traits::from_float(hi)};
      std::uint32_t v;
      memcpy(&v, e, 4);
      return v;
    };
    for (int h = threadIdx.x / half; h < p.heads; h += head_step) {
      float a0, a1, b0, b1;
      unpack(*reinterpret_cast<const std::uint32_t*>(x + h * p.x_head_stride + i), a0, a1);
      unpack(*reinterpret_cast<const std::uint32_t*>(x + h * p.x_head_stride + i + p.pairs), b0, b1);
      *reinterpret_cast<std::uint32_t*>(y + h * p.y_head_stride + i) =
          pack(a0 * cos0 - b0 * sin0, a1 * cos1 - b1 * sin1);
      *reinterpret_cast<std::uint32_t*>(y + h * p.y_head_stride + i + p.pairs) =
          pack(b0 * cos0 + a0 * sin0, b1 * cos1 + a1 * sin1);
    }
    return;
  }
  for (int idx = threadIdx.x; idx < p.heads * p.pairs; idx += kRopeThreads) {
    const int h = idx / p.pairs, i = idx % p.pairs;
    float sin_a, cos_a;
    angle(i, sin_a, cos_a);
    const float a = Traits::to_float(x[h * p.x_head_stride + i]);
    const float b = Traits::to_float(x[h * p.x_head_stride + i + p.pairs]);
    y[h * p.y_head_stride + i] = Traits::from_float(a * cos_a - b * sin_a);
    y[h * p.y_head_stride + i + p.pairs] = Traits::from_float(b * cos_a + a * sin_a);
  }
}

template <class Element>
Status launch_rope(const RopeParams& params, cudaStream_t stream) {
  if (params.rows == 0) return Status::ok();
  rope_kernel<Element><<<static_cast<unsigned>(params.rows), kRopeThreads, 0, stream>>>(params);
  FSA_CHECK_LAUNCH("rope_kernel", stream);
  return Status::ok();
}

}  // namespace fsa::cuda
