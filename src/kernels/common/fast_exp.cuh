// The exponential of the softmax kernels: scores are taken to the log2 domain (times log2 e) so
// that every exponential is one MUFU ex2.
#pragma once

namespace fsa::cuda::common {

constexpr float kLog2e = 1.4426950408889634f;

// 2^x in one MUFU instruction (ex2.approx.ftz: ~2 ulp, denormal results flush to 0, 2^-inf = 0);
// exp2f adds range handling around it.
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

}  // namespace fsa::cuda::common
