// RoPE (GPT-NeoX rotate-half) over [rows, H, D]. One CTA per row: thread 0 finds the row's
// sequence by binary search over cu, then the threads rotate the row's H * D/2 pairs. Angles are
// fp32 as in the reference; elements are converted to fp32, rotated and rounded back once.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

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
  for (int idx = threadIdx.x; idx < p.heads * p.pairs; idx += kRopeThreads) {
    const int h = idx / p.pairs, i = idx % p.pairs;
    // Accurate sincosf, not __sincosf: angles reach position * w ~ 1e5-1e6 rad on long sequences.
    // Its argument reduction for such angles is what ptxas reports as a 32-byte stack frame.
    float sin_a = 0.0f, cos_a = 1.0f;
    if (rotate) sincosf(static_cast<float>(position) * p.frequency[i], &sin_a, &cos_a);
    sin_a *= p.sign;
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
