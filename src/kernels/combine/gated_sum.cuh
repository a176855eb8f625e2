// The gated combination of one element (docs/semantics.md section 7): g0 o_cmp + g1 o_slc + g2
// o_swa in fp32, as fused multiply-adds from zero in branch order. One function for every kernel
// that combines (combine_forward_kernel, the decode step's merge_combine_kernel), so that their
// outputs agree bit for bit.
#pragma once

namespace fsa::cuda::combine {

__device__ __forceinline__ float gated_sum(const float (&gate)[3], float compressed, float selected, float window) {
  return fmaf(gate[2], window, fmaf(gate[1], selected, fmaf(gate[0], compressed, 0.0f)));
}

}  // namespace fsa::cuda::combine
