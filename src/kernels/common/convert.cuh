// fp32 <-> bf16/fp16 element conversion for the kernels templated on the element type.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace fsa::cuda::common {

template <class Element>
struct Convert;
template <>
struct Convert<__nv_bfloat16> {
  static __device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
  static __device__ __forceinline__ __nv_bfloat16 from_float(float x) { return __float2bfloat16_rn(x); }
};
template <>
struct Convert<__half> {
  static __device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
  static __device__ __forceinline__ __half from_float(float x) { return __float2half_rn(x); }
};

}  // namespace fsa::cuda::common
